"""Writes a small synthetic AVE in the official release layout (real mp4 videos), for tests and CPU runs.

Usage::

    python scripts/make_synthetic_ave.py ROOT [--num-videos 60] [--num-categories 5] [--seed 0]

The set, its layout and content are described in :mod:`cola.data.synthetic.ave`; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/make_synthetic_ave.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.data.synthetic.ave import make_synthetic_ave  # noqa: E402

log = logging.getLogger("make_synthetic_ave")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to create (the AVE_Dataset equivalent)")
    parser.add_argument("--num-videos", type=int, default=60, help="number of videos (default 60)")
    parser.add_argument("--num-categories", type=int, default=5, help="AVE categories used (default 5)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--fps", type=int, default=8, help="video frame rate (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        make_synthetic_ave(
            args.root,
            num_videos=args.num_videos,
            seed=args.seed,
            num_categories=args.num_categories,
            size=args.size,
            fps=args.fps,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as err:
        log.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
