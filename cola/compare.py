"""Compare the runs of sweeps: mean ± std over seeds, gain over LoRA, trainable parameters, plots and an HTML page.

``scripts/compare_runs.py`` is its command line. Reads each run folder's ``metrics.json`` and ``config.yaml`` (and,
for CoLA, ``lambda.json``), or, from W&B, the runs' summaries and configs through the W&B API. Runs are split by task
(``task.name``, and ``data.dataset`` / ``data.split_by`` where the config has them: one table each, never mixed), then
grouped by their whole resolved config minus the seed and the keys that only name or place a run (``RUN_SPECIFIC``):
the runs of a group differ only in their seed. A row reports the number of distinct seeds (a seed run twice counts
once: the newest run is kept, with a warning), is labelled by the method and the config keys that vary between the
task's rows, and is marked ``*`` when its runs' configs differ in more than the seed (a run whose config lacks keys
the others have, e.g. one logged to W&B by an older version, joins the one group it otherwise matches). Run folders
without ``metrics.json`` (failed or unfinished) are listed as skipped.

Writes ``comparison.md`` (what is printed), ``comparison.csv``, per task ``comparison_bar.png`` (mean with std error
bars) and ``comparison_params.png`` (metric vs trainable parameters), suffixed ``_<task>`` when there are several
tasks; and, on request, one self-contained HTML page (:func:`write_html`): per task the table and its plots, each
an inline PNG — per metric the settings side by side (seed dots, mean ± std) and the metric against the trainable
parameters; the metric against the rank per method where the rows differ in ``peft.rank`` (``ablation_rank``); for
every CoLA setting the λ profile across depth per module (:mod:`cola.lambdas`, as ``scripts/plot_lambda.py``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from cola.dicts import flatten
from cola.lambdas import SUMMARY_PREFIX, Profile, mean_profile, profile_from_layers, profile_from_summary

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
    "resume_sweep",  # how a sweep was re-run (cola.sweep), not what it trains
    "restart_changed",
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
ABSENT = "<absent>"


# ---------------------------------------------------------------------------------------------- configs


def method_order(method: str) -> int:
    """A method's place in the tables: its place in :data:`cola.peft.METHODS` (frozen towers, baselines, CoLA, full
    fine-tuning); a name no longer registered comes last."""
    from cola.peft import METHODS

    return list(METHODS).index(method) if method in METHODS else len(METHODS)


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
                    "lambda": _folder_lambda(run_dir),
                }
            )
    if not runs:
        listed = "".join(f"\n  skipped {p}: {why}" for p, why in skipped)
        raise SystemExit(f"error: no finished run (metrics.json + config.yaml) below {folder}{listed}")
    return runs, sorted(skipped)


def _folder_lambda(run_dir: Path) -> Profile:
    """The λ profile of a CoLA run folder (its ``lambda.json``); empty for other methods."""
    path = run_dir / "lambda.json"
    if not path.is_file():
        return {}
    try:
        return profile_from_layers(json.loads(path.read_text()))
    except (ValueError, AttributeError):
        return {}


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
        "metrics": {k: v for k, v in summary.items() if not k.startswith(("_", SUMMARY_PREFIX))},
        "path": run.url,
        "time": float(when),
        "time_of": "W&B time of the last log",
        "lambda": profile_from_summary(summary),
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
    """One table per task: {"task", "title", "metrics", "reference", "rows", "notes"}; rows as in ``comparison.csv``,
    each with its gain over the ``reference`` method's row (:data:`cola.peft.REFERENCE_METHOD`, the paper's LoRA)."""
    from cola.peft import REFERENCE_METHOD

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
        _gains(rows, use, reference=REFERENCE_METHOD)
        rows.sort(key=lambda r: (method_order(str(r["method"])), str(r["method"]), r["_sort"], r["setting"]))
        detail = [_plot_detail(r, use) for r in rows]
        for r in rows:
            del r["_group"], r["_sort"]
        tables.append(
            {
                "task": task,
                "title": task_title(task),
                "metrics": use,
                "reference": REFERENCE_METHOD,
                "rows": rows,
                "notes": notes,
                "detail": detail,
            }
        )
    return tables


FLOOR_SUFFIX = {"acc@0.5": "_fixed_box", "acc": "_majority", "miou": "_fixed_mask", "fscore": "_fixed_mask"}
"""The floor written beside a metric (``<split>/<metric><suffix>``: one fixed box, the majority class, the mean mask)."""


def floor_of(metric: str) -> str | None:
    """The floor metric written beside ``metric`` (``testA/acc@0.5`` -> ``testA/acc@0.5_fixed_box``), if any."""
    split, _, name = metric.partition("/")
    suffix = FLOOR_SUFFIX.get(name)
    return f"{split}/{name}{suffix}" if suffix else None


def _plot_detail(row: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    """What the HTML page plots of one row: each seed's value per metric, the rank, the parameters, the mean λ, and
    the metrics' floors (mean over the runs that wrote one)."""
    group = row["_group"]
    members = group["members"]
    profiles = [r["lambda"] for r in members if r.get("lambda")]
    floors = {}
    for m in metrics:
        values = [float(r["metrics"][f]) for r in members if (f := floor_of(m)) and f in r["metrics"]]
        if values:
            floors[m] = statistics.fmean(values)
    return {
        "floors": floors,
        "setting": row["setting"],
        "method": str(row["method"]),
        "rank": group["setting"].get("peft.rank"),
        "params": row["params/trainable"],
        "seeds": {
            m: [(r["config"].get("seed"), float(r["metrics"][m])) for r in members if m in r["metrics"]]
            for m in metrics
        },
        "lambda": mean_profile(profiles),
        "lambda_runs": len(profiles),
    }


def gain_key(metric: str, reference: str) -> str:
    """The row key (``comparison.csv`` column) of ``metric``'s gain over the ``reference`` method's row."""
    return f"{metric} gain vs {reference}"


def _gains(rows: list[dict[str, Any]], metrics: list[str], *, reference: str) -> None:
    """Δ vs the task's row of method ``reference``; with several, vs the one that agrees with the row on the label's
    keys (rank=8 vs rank=8), none when that is not exactly one."""

    def agree(a: dict[str, Any], b: dict[str, Any]) -> bool:
        va, vb = a["_group"]["label_values"], b["_group"]["label_values"]
        return all(va[k] == vb[k] for k in va.keys() & vb.keys())

    refs = [r for r in rows if r["method"] == reference]
    for row in rows:
        base = refs if len(refs) <= 1 else [r for r in refs if agree(r, row)]
        for m in metrics:
            row[gain_key(m, reference)] = row[f"{m} mean"] - base[0][f"{m} mean"] if len(base) == 1 else math.nan


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
                gains = [r[gain_key(m, t["reference"])] for m in metrics]
                cells += ["—" if math.isnan(g) else f"{100 * g:+.2f}" for g in gains]
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


# ---------------------------------------------------------------------------------------------- HTML page

PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
p.meta { color: #555; font-size: .9rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
ul.notes { color: #8a5a00; font-size: .85rem; }
div.plots { display: flex; flex-wrap: wrap; gap: 1rem; }
figure.plot { margin: 0; border: 1px solid #e3e3e3; padding: .5rem; background: #fff; }
figure.plot img { display: block; max-width: 100%; }
figcaption { font-size: .8rem; color: #555; max-width: 560px; }
"""


def method_color(method: str) -> str:
    """The method's colour in the plots (:attr:`cola.peft.Method.color`; a name no longer registered: brown)."""
    from cola.peft import METHODS

    return METHODS[method].color if method in METHODS else "#8c564b"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png_data(fig) -> str:
    """The figure as a base64 PNG (closed afterwards)."""
    import base64
    import io

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _offsets(n: int, width: float = 0.24) -> list[float]:
    """Horizontal offsets of n seed dots around their setting (deterministic, centred)."""
    return [0.0] if n == 1 else [-width / 2 + width * i / (n - 1) for i in range(n)]


def metric_figure(detail: list[dict[str, Any]], metric: str, title: str):
    """The settings side by side: every seed as a dot, the mean ± std as a bar with an error bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.15 * len(detail) + 1.5), 3.8))
    for i, d in enumerate(detail):
        values = [100 * v for _, v in d["seeds"].get(metric, [])]
        if not values:
            continue
        color = method_color(d["method"])
        mean, std = _mean_std(values)
        ax.bar(i, mean, width=0.6, color=color, alpha=0.3)
        ax.errorbar(i, mean, yerr=std, fmt="_", color=color, capsize=8, markersize=22, mew=2, zorder=3)
        ax.scatter([i + o for o in _offsets(len(values))], values, color=color, edgecolor="black", s=24, zorder=4)
    floors = [d["floors"][metric] for d in detail if metric in d.get("floors", {})]
    if floors:  # the score a model must clear (one fixed box, the majority class, the mean mask)
        ax.axhline(
            100 * statistics.fmean(floors),
            color="0.4",
            linestyle="--",
            linewidth=1,
            label=f"floor ({floor_of(metric)})",
        )
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xticks(range(len(detail)), [d["setting"] for d in detail], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}{metric}: seeds (dots), mean ± std (bar)", fontsize=9)
    fig.tight_layout()
    return fig


def rank_figure(detail: list[dict[str, Any]], metric: str, title: str):
    """The metric against the rank, one line per method (mean ± std, seed dots)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    by_method: dict[str, list[dict[str, Any]]] = {}
    for d in detail:
        if isinstance(d["rank"], (int, float)) and d["seeds"].get(metric):
            by_method.setdefault(d["method"], []).append(d)
    for method, ds in by_method.items():
        ds = sorted(ds, key=lambda d: d["rank"])
        color = method_color(method)
        stats = [_mean_std([100 * v for _, v in d["seeds"][metric]]) for d in ds]
        ranks = [d["rank"] for d in ds]
        ax.errorbar(ranks, [m for m, _ in stats], yerr=[s for _, s in stats], color=color, marker="o", capsize=3,
                    label=method)  # fmt: skip
        for d in ds:
            ax.scatter([d["rank"]] * len(d["seeds"][metric]), [100 * v for _, v in d["seeds"][metric]],
                       color=color, alpha=0.5, s=14, edgecolor="none")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}{metric} against the rank", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _count(x: float, _pos: Any = None) -> str:
    """A parameter count as an axis label: 950k, 1.2M."""
    return f"{x / 1e6:.3g}M" if abs(x) >= 1e6 else f"{x / 1e3:.3g}k" if abs(x) >= 1e3 else f"{x:.0f}"


def params_figure(detail: list[dict[str, Any]], metric: str, title: str):
    """The metric (mean ± std) against the trainable parameters, one point per setting."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for d in detail:
        values = [100 * v for _, v in d["seeds"].get(metric, [])]
        if values:
            mean, std = _mean_std(values)
            ax.errorbar(max(d["params"], 1), mean, yerr=std, fmt="o", capsize=3, color=method_color(d["method"]),
                        label=d["setting"])  # fmt: skip
    counts = [max(d["params"], 1) for d in detail]
    if max(counts) / min(counts) > 10:  # a log axis only where the counts span more than a decade
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_count))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15)
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{title}{metric} against the trainable parameters", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def page_plots(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The plots of one task's section: {"kind", "metric" or "setting", "caption", "figure"} in page order —
    per metric the settings side by side and, where the rows differ in ``peft.rank``, the metric against the rank;
    the λ profile of every CoLA setting that has one; per metric the metric against the trainable parameters."""
    from cola.lambdas import plot_profile

    detail, title = table["detail"], f"{table['title']}\n"
    plots = []
    ranked = {d["rank"] for d in detail if isinstance(d["rank"], (int, float))}
    for m in table["metrics"]:
        plots.append(
            {
                "kind": "metric",
                "metric": m,
                "caption": f"{m} per setting: each seed is a dot, the bar and its error bar are the mean ± std; the "
                "dashed line, where the runs wrote one, is the floor.",
                "figure": metric_figure(detail, m, title),
            }
        )
        if len(ranked) > 1:
            plots.append(
                {
                    "kind": "rank",
                    "metric": m,
                    "caption": f"{m} against the rank r, per method (mean ± std over seeds; faint dots: the seeds).",
                    "figure": rank_figure(detail, m, title),
                }
            )
    for d in detail:
        if d["lambda"]:
            runs = d["lambda_runs"]
            plots.append(
                {
                    "kind": "lambda",
                    "setting": d["setting"],
                    "caption": f"λ across depth per module of `{d['setting']}` (mean of {runs} run{'s' * (runs > 1)}, "
                    "as scripts/plot_lambda.py draws one run).",
                    "figure": plot_profile(d["lambda"], f"λ across depth — {d['setting']}"),
                }
            )
    for m in table["metrics"]:
        plots.append(
            {
                "kind": "params",
                "metric": m,
                "caption": f"{m} (mean ± std over seeds) against the trainable parameters, per setting.",
                "figure": params_figure(detail, m, title),
            }
        )
    return plots


def _html_table(table: dict[str, Any]) -> str:
    from html import escape

    metrics = table["metrics"]
    header = ["setting", "seeds", *metrics, *(f"Δ {m} vs LoRA" for m in metrics), "trainable params"]
    lines = ["<table>", "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>"]
    for r in table["rows"]:
        cells = [r["setting"], str(r["seeds"])]
        cells += [f"{100 * r[f'{m} mean']:.2f} ± {100 * r[f'{m} std']:.2f}" for m in metrics]
        gains = [r[gain_key(m, table["reference"])] for m in metrics]
        cells += ["—" if math.isnan(g) else f"{100 * g:+.2f}" for g in gains]
        cells.append(f"{r['params/trainable']:,}")
        lines.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join([*lines, "</table>"])


def write_html(tables: list[dict], skipped: list[tuple[str, str]], path: Path, sources: list[str]) -> list[dict]:
    """One self-contained HTML page (inline CSS, every plot an inline PNG): per task its table, notes and plots
    (:func:`page_plots`), then the skipped runs. Returns the plots written, without their figures."""
    from html import escape

    written: list[dict] = []
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>CoLA comparison</title>",
        f"<style>{PAGE_CSS}</style></head><body>",
        "<h1>CoLA comparison</h1>",
        f'<p class="meta">Runs from {escape(", ".join(sources))}; written {datetime.now():%Y-%m-%d %H:%M}. Metrics in %, '
        "mean ± std over distinct seeds; Δ vs the task's (matching) LoRA row.</p>",
    ]
    for t in tables:
        parts.append(f'<section class="task" id="task-{escape(_slug(t["task"]))}"><h2>{escape(t["title"])}</h2>')
        if not (t["rows"] and t["metrics"]):
            parts.append("<p>no table: none of the compared metrics is in this task's runs</p></section>")
            continue
        parts.append(_html_table(t))
        if t["notes"]:
            parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in t["notes"]) + "</ul>")
        parts.append('<div class="plots">')
        for plot in page_plots(t):
            attrs = f'data-plot="{plot["kind"]}"'
            attrs += "".join(f' data-{k}="{escape(str(plot[k]))}"' for k in ("metric", "setting") if k in plot)
            alt = escape(f"{t['title']}: {plot['caption']}")
            parts.append(
                f'<figure class="plot" {attrs}><img alt="{alt}" src="data:image/png;base64,{_png_data(plot["figure"])}">'
                f"<figcaption>{escape(plot['caption'])}</figcaption></figure>"
            )
            written.append({"task": t["title"], **{k: v for k, v in plot.items() if k != "figure"}})
        parts.append("</div></section>")
    if skipped:
        parts.append('<section id="skipped"><h2>Skipped runs</h2><ul>')
        parts += [f"<li>{escape(p)}: {escape(why)}</li>" for p, why in skipped]
        parts.append("</ul></section>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return written


# ---------------------------------------------------------------------------------------------- the command


def run(
    folders: list[Path],
    *,
    metrics: list[str] | None = None,
    out: Path | None = None,
    html: Path | None = None,
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
    group: str | None = None,
) -> int:
    """What ``scripts/compare_runs.py`` does: load the runs (folders, or a W&B project), compare them, write
    ``comparison.md`` / ``.csv`` / plots into ``out`` (default: the first folder, or ./ for W&B) and, with
    ``html``, the page. Returns the exit code (2: a missing folder or metric, named on stderr)."""
    if wandb_project:
        runs, skipped = load_wandb(wandb_project, wandb_entity, group)
        out = out or Path(".")
        sources = [f"W&B project {wandb_project}" + (f" (group {group})" if group else "")]
    else:
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            print(f"error: {', '.join(missing)} is not a folder (give sweep or run folders)", file=sys.stderr)
            return 2
        runs, skipped = [], []
        for folder in folders:
            found, left = load_folder(folder)
            runs += found
            skipped += left
        out = out or folders[0]
        sources = [str(f) for f in folders]
    available = sorted(set().union(*(r["metrics"] for r in runs)))
    unknown = [m for m in metrics or [] if m not in available]
    if unknown:
        print(f"error: metric(s) {unknown} not found; available: {available}", file=sys.stderr)
        return 2
    tables = compare(runs, metrics)
    out.mkdir(parents=True, exist_ok=True)
    text, md, csv_path = write_report(tables, sorted(skipped), out)
    plotted = [t for t in tables if t["rows"] and t["metrics"]]
    written = [md, csv_path]
    for t in plotted:
        several = len(plotted) > 1
        name = " ".join(dict.fromkeys(str(v) for _, v in t["task"])) or "unknown task"  # e.g. "refcoco unc"
        written += write_plots(
            t["rows"], t["metrics"][0], out, f"_{_slug(t['task'])}" if several else "", name if several else ""
        )
    if html is not None:
        plots = write_html(tables, sorted(skipped), html, sources)
        written.append(html)
        kinds = ", ".join(f"{n} {k}" for k, n in Counter(p["kind"] for p in plots).items())
        text += f"\nHTML page: {html} ({len(plots)} plots: {kinds})\n"
    print(text)
    print("wrote " + ", ".join(os.fspath(p) for p in written))
    return 0
