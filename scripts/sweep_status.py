"""The state of a sweep: one row per job — its overrides, done / running / partial at step k of n / failed / not
started, its key metric, its wall time and, for a failed job, the last error line of its log — and a progress line.

    python scripts/sweep_status.py outputs/refcoco/multiruns/<timestamp>

Exit code 0 when every job is done, 1 otherwise (2: not a sweep folder). How the jobs are found and what each
state means: :mod:`cola.sweep_status`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/sweep_status.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.sweep_status import all_done, format_status, sweep_status  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a multirun folder (hydra.sweep.dir)")
    args = parser.parse_args(argv)
    if not args.sweep.is_dir():
        print(
            f"error: {args.sweep} is not a folder; give a sweep folder (outputs/<task>/multiruns/<time>)",
            file=sys.stderr,
        )
        return 2
    rows = sweep_status(args.sweep)
    print(format_status(args.sweep, rows))
    return 0 if all_done(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
