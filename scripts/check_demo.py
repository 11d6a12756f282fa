"""Train the demo for several seeds (CoLA and frozen towers) and check the README's numbers against them.

    python scripts/check_demo.py                      # seeds 0-4, cola + frozen, into outputs/check_demo (~40 min)
    python scripts/check_demo.py --seeds 0 --methods cola     # one run (~4 min on 2 idle cores)
    python scripts/check_demo.py --write              # after a deliberate recipe change: store + re-render README

Finished runs in ``--out`` are reused, so an interrupted check continues. Exits 1, listing every disagreement,
when a fresh run breaks the stored numbers (``docs/demo_seeds.json``); what is checked: :mod:`cola.demo_check`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/check_demo.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.demo_check import METHODS, DemoArgumentError, DemoCheckError, check  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "check_demo", help="run folders")
    parser.add_argument("--write", action="store_true", help="store the fresh numbers and re-render the README")
    args = parser.parse_args(argv)
    try:
        check(args.out, args.seeds, args.methods, write=args.write)
    except DemoArgumentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DemoCheckError as err:
        print(f"[check-demo] FAILED: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
