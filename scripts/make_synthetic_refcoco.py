"""Writes a synthetic visual-grounding set in the exact RefCOCO ``refer`` layout (docs/data.md#refcoco), for the
demo and tests.

Usage::

    python scripts/make_synthetic_refcoco.py ROOT [--num-images 680] [--seed 0] [--overwrite]

The set, its layout and content are described in :mod:`cola.data.synthetic.refcoco`; this file is its command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/make_synthetic_refcoco.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.data.synthetic.refcoco import DEFAULT_NUM_IMAGES, MANIFEST, make_synthetic_refcoco  # noqa: E402

log = logging.getLogger("make_synthetic_refcoco")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="dataset folder to create (data.root)")
    parser.add_argument(
        "--num-images", type=int, default=DEFAULT_NUM_IMAGES, help="number of images (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty ROOT")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        root = make_synthetic_refcoco(args.root, num_images=args.num_images, seed=args.seed, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as e:
        log.error("error: %s", e)
        return 2
    counts = json.loads((root / MANIFEST).read_text())["counts"]
    for name, c in counts.items():
        log.info("  %-16s refs %s", name, " ".join(f"{s}={n}" for s, n in c["refs"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
