"""Regenerates the README's performance table from the stored benchmark runs (docs/benchmarks/bench_*.json).

    python scripts/benchmark_table.py              # rewrite the table between <!-- bench:start/end --> in README.md
    python scripts/benchmark_table.py --check      # exit 1 when README.md's table differs from the stored runs
    python scripts/benchmark_table.py OUT/bench_*.json --out table.md   # the table alone (scripts/gpu_check.sh)

The table's logic is in cola.bench.table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/benchmark_table.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.bench.table import load_reports, markdown_table, replace_between_markers  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="benchmark JSON reports (default: docs/benchmarks/bench_*.json)")
    p.add_argument("--readme", type=Path, default=REPO / "README.md", help="the file holding the markers")
    p.add_argument("--check", action="store_true", help="compare only: exit 1 when the table is out of date")
    p.add_argument("--out", type=Path, default=None, help="write the table alone here instead of into the README")
    args = p.parse_args(argv)
    paths = args.runs or sorted((REPO / "docs" / "benchmarks").glob("bench_*.json"))
    reports = load_reports(paths)
    if not reports:
        p.error(f"no benchmark report with FLOP counts among {[str(x) for x in paths]}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown_table(reports, relative_to=args.out.parent) + "\n")
        print(f"wrote {args.out}")
        return 0
    text = args.readme.read_text()
    try:
        new = replace_between_markers(text, markdown_table(reports, relative_to=args.readme.parent))
    except ValueError as e:
        p.error(f"{args.readme}: {e}")
    if args.check:
        if new != text:
            print(f"{args.readme}: the performance table differs from {len(reports)} stored runs; "
                  "run python scripts/benchmark_table.py", file=sys.stderr)  # fmt: skip
            return 1
        print(f"{args.readme}: the performance table matches {len(reports)} stored runs")
        return 0
    args.readme.write_text(new)
    print(f"wrote the table of {len(reports)} runs into {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
