"""Compare the runs of a sweep: mean ± std over seeds, gain over LoRA, trainable parameters, and plots.

    python scripts/compare_runs.py outputs/refcoco/multiruns/<timestamp> [--metric testA/acc@0.5] [--out DIR]
    python scripts/compare_runs.py outputs                       # every task below: one table per task
    python scripts/compare_runs.py --wandb-project cola-refcoco [--wandb-entity ME] [--group main_refcoco]

Reads each run folder's ``metrics.json`` and ``config.yaml`` (or, with ``--wandb-project``, the runs' summaries
and configs through the W&B API). Runs are split by task (``task.name``, and ``data.dataset`` / ``data.split_by``
where the config has them: one table each, never mixed), then grouped by their whole resolved config minus the
seed and the keys that only name or place a run (``RUN_SPECIFIC``): the runs of a group differ only in their seed.
A row reports the number of distinct seeds (a seed run twice counts once: the newest run is kept, with a
warning), is labelled by the method and the config keys that vary between the task's rows, and is marked ``*``
when its runs' configs differ in more than the seed (a run whose config lacks keys the others have, e.g. one
logged to W&B by an older version, joins the one group it otherwise matches). Run folders without
``metrics.json`` (failed or unfinished) are listed as skipped.

Writes into ``--out`` (default: the given folder, or ./ for W&B): ``comparison.md`` (what is printed),
``comparison.csv``, and per task ``comparison_bar.png`` (mean with std error bars) and ``comparison_params.png``
(metric vs trainable parameters), suffixed ``_<task>`` when there are several tasks.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

# Config keys (and everything under them) that name, place or log a run rather than set what it trains: left out
# of the grouping. The seed is what gets averaged over; ``data.root`` is kept (another root is another dataset).
RUN_SPECIFIC = (
    "seed",
    "run_name",
    "ckpt_path",  # where a run resumed from
    "resume_finished",
    "rank",  # the shorthand rank=R: what it sets is in peft.rank and peft.alpha
    "tags",
    "experiment_name",  # the sweep's name: the same setting in two sweeps is the same setting
    "paths",  # where the repo, data and outputs live (values under them are compared relative to these)
    "hydra",
    "logger",  # CSV / W&B project, group, run name, tags, offline
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.rich_summary",
    "callbacks.lr_monitor",
)
# Keys that label a row whenever they vary (in this order, first); other keys label rows where they vary too, but
# a peft.* key only where it varies within a method (not e.g. MokA's own dropout).
LABEL_KEYS = ("peft.rank", "peft.sharing", "peft.propagation", "peft.condition", "targets")
LABEL_ORDER = ("peft.rank", "peft.alpha", "peft.sharing", "peft.propagation", "peft.condition", "targets")
TASK_KEYS = ("task.name", "data.dataset", "data.split_by")  # one table per value of these
METHOD_ORDER = {"frozen": 0, "lora": 1, "lora_param_matched": 2, "moka": 3, "cola": 4, "full": 5}
ABSENT = "<absent>"


# ---------------------------------------------------------------------------------------------- configs


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and empty dicts stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(key: str) -> bool:
    return key.startswith("_") or any(key == p or key.startswith(p + ".") for p in RUN_SPECIFIC)


def _relative_to_paths(value: Any, paths: list[tuple[str, str]]) -> Any:
    """Writes strings under the run's ``paths.*`` folders as ``${paths.x}/...`` (a moved checkout is the same)."""
    if isinstance(value, str):
        for name, p in paths:
            if value == p or value.startswith(p.rstrip("/") + "/"):
                return "${" + name + "}" + value[len(p.rstrip("/")) :]
        return value
    if isinstance(value, list):
        return [_relative_to_paths(v, paths) for v in value]
    if isinstance(value, dict):
        return {k: _relative_to_paths(v, paths) for k, v in value.items()}
    return value


def setting_of(cfg: dict[str, Any]) -> dict[str, Any]:
    """The run's setting: its flattened config (dotted keys) without the seed and the run-specific keys."""
    flat = flatten(cfg)
    paths = [(k, str(v)) for k, v in flat.items() if k.startswith("paths.") and isinstance(v, str)]
    paths = sorted((p for p in paths if p[1] not in ("", "/")), key=lambda p: (-len(p[1]), p[0]))  # longest first
    return {k: _relative_to_paths(v, paths) for k, v in flat.items() if not _ignored(k)}


def task_of(cfg: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    flat = flatten(cfg)
    return tuple((k, flat[k]) for k in TASK_KEYS if flat.get(k) is not None)


def task_title(task: tuple[tuple[str, Any], ...]) -> str:
    values = dict(task)
    name = str(values.pop("task.name", "(no task.name in the config)"))
    return name + (" (" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")" if values else "")


def _slug(task: tuple[tuple[str, Any], ...]) -> str:
    parts = list(dict.fromkeys(str(v) for _, v in task)) or ["unknown"]
    return re.sub(r"[^A-Za-z0-9+._-]", "_", "_".join(parts))


def _dump(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _fmt(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)


# ---------------------------------------------------------------------------------------------- loading


def find_run_dirs(folder: Path) -> tuple[list[Path], list[Path]]:
    """(run folders, empty job folders) below ``folder``.

    A run folder holds ``config.yaml``, ``metrics.json`` or Hydra's ``.hydra/``, or is a job of a Hydra sweep
    folder (next to ``multirun.yaml``); nothing below it is searched (its ``wandb/`` has a ``config.yaml`` too).
    A subfolder with no run in it, next to run folders, is a job that failed before writing anything.
    """
    runs: list[Path] = []
    empty: list[Path] = []

    def is_run(d: Path) -> bool:
        return (
            (d / "config.yaml").is_file()
            or (d / "metrics.json").is_file()
            or (d / ".hydra").is_dir()
            or (d != folder and (d.parent / "multirun.yaml").is_file())
        )

    def visit(d: Path) -> int:
        if is_run(d):
            runs.append(d)
            return 1
        children = sorted(c for c in d.iterdir() if c.is_dir() and not c.is_symlink() and not c.name.startswith("."))
        found = {c: visit(c) for c in children}
        if any(is_run(c) for c in children):
            empty.extend(c for c, n in found.items() if n == 0)
        return sum(found.values())

    visit(folder)
    return runs, empty


def load_folder(folder: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Every finished run below ``folder`` as {"config", "metrics", "path", "time", "time_of"}; and the skipped
    run folders as (folder, reason)."""
    run_dirs, empty = find_run_dirs(folder)
    never = "no config.yaml or metrics.json: failed before training"
    runs, skipped = [], [(str(d), never) for d in empty]
    for run_dir in run_dirs:
        cfg_path, metrics_path = run_dir / "config.yaml", run_dir / "metrics.json"
        if not metrics_path.is_file():
            skipped.append((str(run_dir), "no metrics.json: failed or unfinished" if cfg_path.is_file() else never))
        elif not cfg_path.is_file():
            skipped.append((str(run_dir), "metrics.json but no config.yaml (an eval.py folder?)"))
        elif isinstance((cfg := yaml.safe_load(cfg_path.read_text()) or {}).get("eval"), dict):
            skipped.append((str(run_dir), f"an eval.py folder (of {cfg['eval'].get('ckpt_path')}), not a training run"))
        else:
            runs.append(
                {
                    "config": cfg,
                    "metrics": json.loads(metrics_path.read_text()),
                    "path": str(run_dir),
                    "time": metrics_path.stat().st_mtime,
                    "time_of": "metrics.json modification time",
                }
            )
    if not runs:
        listed = "".join(f"\n  skipped {p}: {why}" for p, why in skipped)
        raise SystemExit(f"error: no finished run (metrics.json + config.yaml) below {folder}{listed}")
    return runs, sorted(skipped)


def wandb_record(run: Any) -> dict[str, Any]:
    """A finished W&B run (``wandb.apis.public.Run`` or anything with its attributes) as a run record."""
    summary = {k: v for k, v in run.summary.items() if isinstance(v, (int, float))}
    when = summary.get("_timestamp")  # the time of the run's last log (seconds since the epoch)
    if not isinstance(when, (int, float)):
        try:
            when = datetime.fromisoformat(str(run.created_at).replace("Z", "+00:00")).timestamp()
        except (AttributeError, ValueError):
            when = 0.0
    return {
        "config": {k: v for k, v in dict(run.config).items() if not k.startswith("_")},
        "metrics": {k: v for k, v in summary.items() if not k.startswith("_")},
        "path": run.url,
        "time": float(when),
        "time_of": "W&B time of the last log",
    }


def load_wandb(project: str, entity: str | None, group: str | None) -> tuple[list[dict], list[tuple[str, str]]]:
    """Finished runs of a W&B project (online API), and the others as (url, state)."""
    import wandb

    api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    filters = {"group": group} if group else {}
    runs, skipped = [], []
    for run in api.runs(path, filters=filters):
        if run.state != "finished":
            skipped.append((run.url, f"state {run.state}"))
            continue
        runs.append(wandb_record(run))
    if not runs:
        raise SystemExit(f"error: no finished run in W&B project {path} (group {group})")
    return runs, skipped


# ---------------------------------------------------------------------------------------------- grouping


def group_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups one task's runs by setting (:func:`setting_of`).

    Configs are compared whole. A group whose configs lack keys that one other group has, and agree with it on
    every key they have (e.g. W&B runs logged by an older version), joins that group (not when several match).
    Returns groups {"setting", "members" (one run per distinct seed: the newest), "duplicates" [(seed, kept,
    [dropped])], "mixed" {key: {value: [paths]}} (keys in which the members differ), "unseeded" [paths]}.
    """
    exact: dict[str, dict[str, Any]] = {}
    for run in runs:
        s = setting_of(run["config"])
        exact.setdefault(_dump(s), {"setting": s, "runs": []})["runs"].append(run)
    groups = list(exact.values())

    def covers(big: dict, small: dict) -> bool:  # big has every key of small, and more, with the same values
        return len(big) > len(small) and all(k in big and _dump(big[k]) == _dump(v) for k, v in small.items())

    merged_into: dict[int, int] = {}
    for i, g in enumerate(groups):
        cands = [j for j, h in enumerate(groups) if covers(h["setting"], g["setting"])]
        tops = [j for j in cands if not any(covers(groups[k]["setting"], groups[j]["setting"]) for k in cands)]
        if len(tops) == 1:  # tops are complete groups: they cover no other candidate, so they merge nowhere
            merged_into[i] = tops[0]
    for i, j in merged_into.items():
        groups[j]["runs"] = groups[j]["runs"] + groups[i]["runs"]

    out = []
    for g in (g for i, g in enumerate(groups) if i not in merged_into):
        settings = [setting_of(r["config"]) for r in g["runs"]]
        mixed: dict[str, dict[str, list[str]]] = {}
        for key in sorted(set().union(*settings)):
            values: dict[str, list[str]] = {}
            for r, s in zip(g["runs"], settings):
                values.setdefault(_fmt(s[key]) if key in s else ABSENT, []).append(r["path"])
            if len(values) > 1:
                mixed[key] = values
        by_seed: dict[str, list[dict[str, Any]]] = {}
        unseeded = []
        for r in g["runs"]:
            seed = r["config"].get("seed")
            if seed is None:
                unseeded.append(r)
            else:
                by_seed.setdefault(_dump(seed), []).append(r)
        members, duplicates = [], []
        for seed_key in sorted(by_seed, key=lambda s: (len(s), s)):
            same = sorted(by_seed[seed_key], key=lambda r: (r["time"], r["path"]))
            members.append(same[-1])
            if len(same) > 1:
                duplicates.append((json.loads(seed_key), same[-1], same[:-1]))
        out.append(
            {
                "setting": g["setting"],
                "members": members + unseeded,
                "duplicates": duplicates,
                "mixed": mixed,
                "unseeded": [r["path"] for r in unseeded],
            }
        )
    return out


def _targets_label(setting: dict[str, Any]) -> str | None:
    targets = setting.get("model.targets.vit")
    if not isinstance(targets, list) or not targets:
        return None
    has_attn = any("attn" in t for t in targets)
    has_mlp = any("mlp" in t for t in targets)
    return "all" if has_attn and has_mlp else ("attention" if has_attn else "ffn" if has_mlp else _fmt(targets))


def _short_names(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with."""
    out = {}
    for k in keys:
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != k and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        out[k] = suffix
    return out


def _order(v: Any) -> tuple:
    return (0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, _fmt(v))


def label_groups(groups: list[dict[str, Any]]) -> None:
    """Sets each group's "label": its method and the keys that take two or more values among the groups that
    have them (a key only CoLA has, e.g. sharing, labels CoLA rows only when they differ in it). A ``peft.*`` key
    outside ``LABEL_KEYS`` that only follows the method (e.g. MokA's own dropout) does not label. Also sets "sort"
    (the label's values, numbers as numbers) and "label_values" (the label's keys and values, for the LoRA match)."""
    settings = [dict(g["setting"]) for g in groups]
    for s in settings:  # the adapted layers as one word (all / attention / ffn)
        if any(k.startswith("model.targets.") for k in s):
            s["targets"] = _targets_label(s)
    keys = sorted(
        set().union(*settings) - {"peft.method"},
        key=lambda k: (LABEL_ORDER.index(k) if k in LABEL_ORDER else len(LABEL_ORDER), not k.startswith("peft."), k),
    )

    def values(k: str, among: list[dict[str, Any]]) -> set[str]:
        return {_dump(s[k]) for s in among if s.get(k) is not None}

    by_method: dict[str, list[dict[str, Any]]] = {}
    for s in settings:
        by_method.setdefault(_dump(s.get("peft.method")), []).append(s)
    varying = [
        k
        for k in keys
        if len(values(k, settings)) > 1
        and (k in LABEL_KEYS or not k.startswith("peft.") or any(len(values(k, ss)) > 1 for ss in by_method.values()))
    ]
    if "targets" in varying:
        varying = [k for k in varying if not k.startswith("model.targets.")]
    else:
        varying = [k for k in varying if k != "targets"]
    labels = [[k for k in varying if s.get(k) is not None] for s in settings]

    def render() -> list[str]:
        short = _short_names(sorted({k for ks in labels for k in ks}))
        return [
            " ".join([str(s.get("peft.method"))] + [f"{short[k]}={_fmt(s[k]) if k in s else 'absent'}" for k in ks])
            for s, ks in zip(settings, labels)
        ]

    # groups whose labels still coincide (they differ only in keys some of them lack or set to null): add those
    seen: dict[str, list[int]] = {}
    for i, text in enumerate(render()):
        seen.setdefault(text, []).append(i)
    for same in (ix for ix in seen.values() if len(ix) > 1):
        extra = [k for k in keys if k != "targets" and len({_dump(settings[i].get(k, ABSENT)) for i in same}) > 1]
        for i in same:
            labels[i] += [k for k in extra if k not in labels[i]]
    for g, text, s in zip(groups, render(), settings):
        g["label"] = text
        g["sort"] = tuple(_order(s.get(k)) for k in varying)
        g["label_values"] = {k: _dump(s[k]) for k in varying if s.get(k) is not None}


# ---------------------------------------------------------------------------------------------- tables


def default_metric(runs: list[dict[str, Any]]) -> str | None:
    keys = set().union(*(r["metrics"] for r in runs))
    for preferred in ("testA/acc@0.5", "test/acc@0.5", "test/acc", "test/miou", "val/acc@0.5", "val/acc", "val/miou"):
        if preferred in keys:
            return preferred
    candidates = sorted(k for k in keys if "/" in k and not k.startswith(("params/", "time/")))
    return candidates[0] if candidates else None


def _short(paths: list[str]) -> str:
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def compare(runs: list[dict[str, Any]], metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """One table per task: {"task", "title", "metrics", "rows", "notes"}; rows as in ``comparison.csv``."""
    by_task: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        by_task.setdefault(task_of(run["config"]), []).append(run)
    tables = []
    for task in sorted(by_task, key=lambda t: (not t, _dump(t))):
        task_runs, notes = by_task[task], []
        available = sorted(set().union(*(r["metrics"] for r in task_runs)))
        if metrics:
            use = [m for m in metrics if m in available]
            for m in metrics:
                if m not in available:
                    notes.append(f"note: no run of this task has the metric {m} (available: {', '.join(available)})")
        else:
            use = [m] if (m := default_metric(task_runs)) else []
        groups = group_runs(task_runs)
        label_groups(groups)
        rows = []
        for g in groups:
            members = g["members"]
            row: dict[str, Any] = {
                "task": task_title(task),
                "setting": g["label"] + (" *" if g["mixed"] else ""),
                "method": g["setting"].get("peft.method"),
                "seeds": len(members),
                "seed list": " ".join(str(r["config"].get("seed", "?")) for r in members),
                "mixed": "; ".join(g["mixed"]),
            }
            for m in use:
                values = [float(r["metrics"][m]) for r in members if m in r["metrics"]]
                row[f"{m} mean"] = statistics.fmean(values) if values else math.nan
                row[f"{m} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            params = [int(r["metrics"]["params/trainable"]) for r in members if "params/trainable" in r["metrics"]]
            row["params/trainable"] = params[0] if params else 0
            row["_group"] = g
            row["_sort"] = g["sort"]
            rows.append(row)
            if g["mixed"]:
                diffs = [
                    f"{k}: " + ", ".join(f"{v} ({_short(p)})" for v, p in vals.items())
                    for k, vals in list(g["mixed"].items())[:5]
                ]
                more = f"; and {len(g['mixed']) - 5} more keys" if len(g["mixed"]) > 5 else ""
                notes.append(
                    f"warning: `{row['setting']}` groups runs whose configs differ in more than the seed: "
                    + "; ".join(diffs)
                    + more
                )
            for seed, kept, dropped in g["duplicates"]:
                notes.append(
                    f"warning: seed {seed} of `{row['setting']}` ran {len(dropped) + 1} times: counted once, kept "
                    f"the newest by {kept['time_of']}, {kept['path']}; ignored {_short([r['path'] for r in dropped])}"
                )
            if g["unseeded"]:
                notes.append(
                    f"warning: `{row['setting']}` has runs without a seed in their config, each counted as "
                    f"one seed: {_short(g['unseeded'])}"
                )
        _gains(rows, use)
        rows.sort(key=lambda r: (METHOD_ORDER.get(str(r["method"]), 9), str(r["method"]), r["_sort"], r["setting"]))
        for r in rows:
            del r["_group"], r["_sort"]
        tables.append({"task": task, "title": task_title(task), "metrics": use, "rows": rows, "notes": notes})
    return tables


def _gains(rows: list[dict[str, Any]], metrics: list[str]) -> None:
    """Δ vs the task's LoRA row; with several, vs the one that agrees with the row on the label's keys (rank=8 vs
    rank=8), none when that is not exactly one."""

    def agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
        va, vb = a["_group"]["label_values"], b["_group"]["label_values"]
        return all(va[k] == vb[k] for k in va.keys() & vb.keys())

    loras = [r for r in rows if r["method"] == "lora"]
    for row in rows:
        base = loras if len(loras) <= 1 else [r for r in loras if agree(r, row)]
        for m in metrics:
            row[f"{m} gain vs lora"] = row[f"{m} mean"] - base[0][f"{m} mean"] if len(base) == 1 else math.nan


def write_report(tables: list[dict], skipped: list[tuple[str, str]], out: Path) -> tuple[str, Path, Path]:
    """``comparison.md`` (returned as text too) and ``comparison.csv`` (every task's rows)."""
    lines = ["Metrics in %, mean ± std over distinct seeds; Δ vs the task's (matching) LoRA row."]
    if any(r["mixed"] for t in tables for r in t["rows"]):
        lines[0] += " `*`: runs whose configs differ in more than the seed (warning under the table)."
    fields: list[str] = []
    for t in tables:
        lines += ["", f"## {t['title']}", ""]
        if t["rows"] and t["metrics"]:
            metrics = t["metrics"]
            header = ["setting", "seeds", *metrics, *(f"Δ {m} vs LoRA" for m in metrics), "trainable params"]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for r in t["rows"]:
                cells = [r["setting"], str(r["seeds"])]
                cells += [f"{100 * r[f'{m} mean']:.2f} ± {100 * r[f'{m} std']:.2f}" for m in metrics]
                cells += [
                    "—" if math.isnan(r[f"{m} gain vs lora"]) else f"{100 * r[f'{m} gain vs lora']:+.2f}"
                    for m in metrics
                ]
                cells.append(f"{r['params/trainable']:,}")
                lines.append("| " + " | ".join(cells) + " |")
                fields += [k for k in r if k not in fields]
        else:
            lines.append("no table: none of the compared metrics is in this task's runs")
        if t["notes"]:
            lines += [""] + [f"- {n}" for n in t["notes"]]
    if skipped:
        lines += ["", "## Skipped runs", ""] + [f"- {p}: {why}" for p, why in skipped]
    text = "\n".join(lines) + "\n"
    md_path, csv_path = out / "comparison.md", out / "comparison.csv"
    md_path.write_text(text)
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(r for t in tables if t["metrics"] for r in t["rows"])
    return text, md_path, csv_path


def write_plots(
    rows: list[dict[str, Any]], metric: str, out: Path, suffix: str = "", task: str = ""
) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["setting"] for r in rows]
    means = [100 * r[f"{metric} mean"] for r in rows]
    stds = [100 * r[f"{metric} std"] for r in rows]
    title = f"{task}\n" if task else ""
    bar = out / f"comparison_bar{suffix}.png"
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}{metric}: mean ± std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(bar, dpi=120)
    plt.close(fig)
    scatter = out / f"comparison_params{suffix}.png"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r, m, s in zip(rows, means, stds):
        ax.errorbar(max(r["params/trainable"], 1), m, yerr=s, fmt="o", capsize=3, label=r["setting"])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{metric} (%)")
    if title:
        ax.set_title(task, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    return bar, scatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, help="a multirun folder (or any folder of run folders)")
    parser.add_argument(
        "--metric", action="append", help="metric(s) to compare (default: each task's main test metric)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the given folder, or ./ for W&B)")
    parser.add_argument("--wandb-project", help="read runs from this W&B project instead of a folder")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--group", help="W&B group (one experiment)")
    args = parser.parse_args(argv)
    if args.wandb_project:
        runs, skipped = load_wandb(args.wandb_project, args.wandb_entity, args.group)
        out = args.out or Path(".")
    elif args.folder is not None:
        if not args.folder.is_dir():
            print(f"error: {args.folder} is not a folder", file=sys.stderr)
            return 2
        runs, skipped = load_folder(args.folder)
        out = args.out or args.folder
    else:
        parser.error("give a multirun folder or --wandb-project")
    available = sorted(set().union(*(r["metrics"] for r in runs)))
    missing = [m for m in args.metric or [] if m not in available]
    if missing:
        print(f"error: metric(s) {missing} not found; available: {available}", file=sys.stderr)
        return 2
    tables = compare(runs, args.metric)
    out.mkdir(parents=True, exist_ok=True)
    text, md, csv_path = write_report(tables, skipped, out)
    plotted = [t for t in tables if t["rows"] and t["metrics"]]
    written = [md, csv_path]
    for t in plotted:
        several = len(plotted) > 1
        name = " ".join(dict.fromkeys(str(v) for _, v in t["task"])) or "unknown task"  # e.g. "refcoco unc"
        written += write_plots(
            t["rows"], t["metrics"][0], out, f"_{_slug(t['task'])}" if several else "", name if several else ""
        )
    print(text)
    print("wrote " + ", ".join(os.fspath(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
