"""Build the CoLA-vs-LoRA comparison of one experiment as a W&B Report (W&B's report library, wandb-workspaces).

    python scripts/wandb_report.py --entity ME --project cola-refcoco --experiment main_refcoco [--dry-run]
    python scripts/wandb_report.py ... --sweep outputs/refcoco/multiruns/<timestamp>   # λ layer names from a local run

Panels (per metric: methods side by side with mean ± std and the floor, every seed, the metric against the trainable
parameters and, for a rank sweep, against the rank; for CoLA, λ across depth per module) read the runs of W&B group
NAME, the method as their job type. ``--dry-run`` prints the report's structure and saves nothing. The work is done
by :mod:`cola.wandb_report`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/wandb_report.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.wandb_report import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", required=True, help="W&B project (train.py logs task T to cola-T)")
    parser.add_argument(
        "--experiment", required=True, help="experiment name (configs/experiment/NAME.yaml): the W&B group"
    )
    parser.add_argument("--metric", action="append", help="metric(s) to show (default: the task's main test metrics)")
    parser.add_argument(
        "--sweep", action="append", type=Path, default=[], help="a local sweep folder to read λ layer names from"
    )
    parser.add_argument("--title", help="report title (default: '<experiment>: CoLA vs LoRA')")
    parser.add_argument("--dry-run", action="store_true", help="print the report's structure, save nothing")
    args = parser.parse_args(argv)
    return run(
        entity=args.entity,
        project=args.project,
        experiment=args.experiment,
        metrics=args.metric,
        sweeps=args.sweep,
        title=args.title,
        dry_run=args.dry_run,
    )


if __name__ == "__main__":
    sys.exit(main())
