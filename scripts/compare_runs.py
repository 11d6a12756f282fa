"""Compare the runs of sweeps: mean ± std over seeds, gain over LoRA, trainable parameters, plots, an HTML page.

    python scripts/compare_runs.py outputs/refcoco/multiruns/<timestamp> [--metric testA/acc@0.5] [--out DIR]
    python scripts/compare_runs.py <sweep dir> [<sweep dir> ...] --html report.html   # + a self-contained page
    python scripts/compare_runs.py outputs                       # every task below: one table per task
    python scripts/compare_runs.py --wandb-project cola-refcoco [--wandb-entity ME] [--group main_refcoco]

Writes into ``--out`` (default: the first folder, or ./ for W&B): ``comparison.md`` (what is printed),
``comparison.csv``, per task ``comparison_bar.png`` and ``comparison_params.png``; with ``--html PATH`` one page
with every task's table and plots (per metric: settings side by side with seed dots and mean ± std, the metric
against the rank per method for a rank sweep, the metric against the trainable parameters; the λ profile of every
CoLA setting). How runs are grouped and labelled: :mod:`cola.compare`, which does the work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/compare_runs.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.compare import run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path, help="multirun folders (or any folders of run folders)")
    parser.add_argument(
        "--metric", action="append", help="metric(s) to compare (default: each task's main test metric)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder, or ./ for W&B)")
    parser.add_argument("--html", type=Path, help="also write a self-contained HTML page with the tables and plots")
    parser.add_argument("--wandb-project", help="read runs from this W&B project instead of folders")
    parser.add_argument("--wandb-entity")
    parser.add_argument("--group", help="W&B group (one experiment)")
    args = parser.parse_args(argv)
    if not args.wandb_project and not args.folders:
        parser.error("give a multirun folder or --wandb-project")
    return run(
        args.folders,
        metrics=args.metric,
        out=args.out,
        html=args.html,
        wandb_project=args.wandb_project,
        wandb_entity=args.wandb_entity,
        group=args.group,
    )


if __name__ == "__main__":
    sys.exit(main())
