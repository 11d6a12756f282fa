"""Compare the runs of a sweep: mean ± std over seeds, gain over LoRA, trainable parameters, and plots.

    python scripts/compare_runs.py outputs/refcoco/multiruns/<timestamp> [--metric testA/acc@0.5] [--out DIR]
    python scripts/compare_runs.py --wandb-project cola-refcoco [--wandb-entity ME] [--group main_refcoco]

Reads each job's ``metrics.json`` and ``config.yaml`` (or, with ``--wandb-project``, the runs' summaries and
configs through the W&B API), groups runs that differ only in their seed, and writes into ``--out`` (default:
the sweep folder): ``comparison.md``, ``comparison.csv``, ``comparison_bar.png`` (mean with std error bars)
and ``comparison_params.png`` (metric vs trainable parameters).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

# The settings that tell runs apart (the seed is what gets averaged over).
SETTING_KEYS = ("peft.method", "peft.rank", "peft.sharing", "peft.propagation", "peft.condition", "targets")


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _targets_label(cfg: dict) -> str | None:
    targets = _get(cfg, "model.targets.vit")
    if not targets:
        return None
    has_attn = any("attn" in t for t in targets)
    has_mlp = any("mlp" in t for t in targets)
    return "all" if has_attn and has_mlp else ("attention" if has_attn else "ffn")


def setting_of(cfg: dict) -> dict[str, Any]:
    """The run's setting: the method (and the knobs that differ between runs of a sweep)."""
    out = {k: _get(cfg, k) for k in SETTING_KEYS if k != "targets"}
    out["targets"] = _targets_label(cfg)
    return out


def load_folder(folder: Path) -> list[dict[str, Any]]:
    """Every finished job below ``folder``: {"config": ..., "metrics": ..., "path": ...}."""
    runs = []
    for metrics_path in sorted(folder.rglob("metrics.json")):
        run_dir = metrics_path.parent
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            continue
        runs.append(
            {
                "config": yaml.safe_load(cfg_path.read_text()),
                "metrics": json.loads(metrics_path.read_text()),
                "path": str(run_dir),
            }
        )
    if not runs:
        raise SystemExit(f"error: no finished run (metrics.json + config.yaml) below {folder}")
    return runs


def load_wandb(project: str, entity: str | None, group: str | None) -> list[dict[str, Any]]:
    """Finished runs of a W&B project (online API)."""
    import wandb

    api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    filters = {"group": group} if group else {}
    runs = []
    for run in api.runs(path, filters=filters):
        if run.state != "finished":
            continue
        summary = {k: v for k, v in run.summary.items() if isinstance(v, (int, float))}
        runs.append({"config": dict(run.config), "metrics": summary, "path": run.url})
    if not runs:
        raise SystemExit(f"error: no finished run in W&B project {path} (group {group})")
    return runs


def default_metric(runs: list[dict[str, Any]]) -> str:
    keys = runs[0]["metrics"].keys()
    for preferred in ("testA/acc@0.5", "test/acc@0.5", "test/acc", "test/miou", "val/acc@0.5", "val/acc", "val/miou"):
        if preferred in keys:
            return preferred
    return sorted(k for k in keys if "/" in k and not k.startswith(("params/", "time/")))[0]


def label_of(setting: dict[str, Any], varying: list[str]) -> str:
    parts = [str(setting["peft.method"])]
    for k in varying:
        if k != "peft.method" and setting.get(k) is not None:
            parts.append(f"{k.split('.')[-1]}={setting[k]}")
    return " ".join(parts)


def summarise(runs: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per setting: mean and std (over seeds) of each metric, seeds, trainable parameters."""
    settings = [setting_of(r["config"]) for r in runs]
    # keys that take two or more values among the runs that have them (a key only CoLA has, e.g. sharing, does
    # not label every CoLA row unless CoLA runs differ in it)
    varying = [k for k in SETTING_KEYS if len({json.dumps(s[k]) for s in settings if s.get(k) is not None}) > 1]
    if "peft.method" not in varying:
        varying.insert(0, "peft.method")
    groups: dict[str, list[dict[str, Any]]] = {}
    for run, setting in zip(runs, settings):
        groups.setdefault(label_of(setting, varying), []).append({**run, "setting": setting})
    rows = []
    for label, members in groups.items():
        row: dict[str, Any] = {"setting": label, "method": members[0]["setting"]["peft.method"], "seeds": len(members)}
        for m in metrics:
            values = [float(r["metrics"][m]) for r in members if m in r["metrics"]]
            row[f"{m} mean"] = statistics.fmean(values) if values else math.nan
            row[f"{m} std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        params = [int(r["metrics"].get("params/trainable", 0)) for r in members]
        row["params/trainable"] = params[0] if params else 0
        rows.append(row)
    lora = next((r for r in rows if r["method"] == "lora"), None)
    for row in rows:
        for m in metrics:
            base = lora[f"{m} mean"] if lora else math.nan
            row[f"{m} gain vs lora"] = row[f"{m} mean"] - base if lora else math.nan
    order = {"frozen": 0, "lora": 1, "lora_param_matched": 2, "moka": 3, "cola": 4, "full": 5}
    rows.sort(key=lambda r: (order.get(r["method"], 9), r["setting"]))
    return rows


def write_tables(rows: list[dict[str, Any]], metrics: list[str], out: Path) -> tuple[Path, Path]:
    csv_path, md_path = out / "comparison.csv", out / "comparison.md"
    fields = list(rows[0].keys())
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    header = ["setting", "seeds", *metrics, *(f"Δ {m} vs LoRA" for m in metrics), "trainable params"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["setting"], str(r["seeds"])]
        cells += [f"{100 * r[f'{m} mean']:.2f} ± {100 * r[f'{m} std']:.2f}" for m in metrics]
        cells += [
            "—" if math.isnan(r[f"{m} gain vs lora"]) else f"{100 * r[f'{m} gain vs lora']:+.2f}" for m in metrics
        ]
        cells.append(f"{r['params/trainable']:,}")
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("Metrics in %, mean ± std over seeds.\n\n" + "\n".join(lines) + "\n")
    return md_path, csv_path


def write_plots(rows: list[dict[str, Any]], metric: str, out: Path) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["setting"] for r in rows]
    means = [100 * r[f"{metric} mean"] for r in rows]
    stds = [100 * r[f"{metric} std"] for r in rows]
    bar = out / "comparison_bar.png"
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(rows)), 3.5))
    ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(bar, dpi=120)
    plt.close(fig)
    scatter = out / "comparison_params.png"
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r, m, s in zip(rows, means, stds):
        ax.errorbar(max(r["params/trainable"], 1), m, yerr=s, fmt="o", capsize=3, label=r["setting"])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(scatter, dpi=120)
    plt.close(fig)
    return bar, scatter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, help="a multirun folder (or any folder of run folders)")
    parser.add_argument("--metric", action="append", help="metric(s) to compare (default: the main test metric)")
    parser.add_argument("--out", type=Path, help="output folder (default: the sweep folder, or ./ for W&B)")
    parser.add_argument("--wandb-project", help="read runs from this W&B project instead of a folder")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--group", help="W&B group (one experiment)")
    args = parser.parse_args(argv)
    if args.wandb_project:
        runs = load_wandb(args.wandb_project, args.wandb_entity, args.group)
        out = args.out or Path(".")
    elif args.folder is not None:
        if not args.folder.is_dir():
            print(f"error: {args.folder} is not a folder", file=sys.stderr)
            return 2
        runs = load_folder(args.folder)
        out = args.out or args.folder
    else:
        parser.error("give a multirun folder or --wandb-project")
    metrics = args.metric or [default_metric(runs)]
    missing = [m for m in metrics if not any(m in r["metrics"] for r in runs)]
    if missing:
        print(f"error: metric(s) {missing} not found; available: {sorted(runs[0]['metrics'])}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs, metrics)
    md, csv_path = write_tables(rows, metrics, out)
    bar, scatter = write_plots(rows, metrics[0], out)
    print(md.read_text())
    print(f"wrote {md}, {csv_path}, {bar}, {scatter}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
