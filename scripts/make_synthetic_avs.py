"""Writes a small synthetic AVSBench (S4 + MS3) in the official folder layout, for tests and CPU runs.

Usage::

    python scripts/make_synthetic_avs.py ROOT [--num-s4 40] [--num-ms3 24] [--num-videos N] [--seed 0]

The set, its layout and content are described in :mod:`cola.data.synthetic.avs`; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/make_synthetic_avs.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.data.synthetic.avs import make_synthetic_avs  # noqa: E402

log = logging.getLogger("make_synthetic_avs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to create (holds Single-source/ and Multi-sources/)")
    parser.add_argument("--num-s4", type=int, default=40, help="number of S4 clips (default 40)")
    parser.add_argument("--num-ms3", type=int, default=24, help="number of MS3 clips (default 24)")
    parser.add_argument("--num-videos", type=int, default=None, help="sets both --num-s4 and --num-ms3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    num_s4 = args.num_videos if args.num_videos is not None else args.num_s4
    num_ms3 = args.num_videos if args.num_videos is not None else args.num_ms3
    try:
        make_synthetic_avs(args.root, num_s4=num_s4, num_ms3=num_ms3, seed=args.seed, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
