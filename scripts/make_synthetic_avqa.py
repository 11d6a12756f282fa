"""Writes a small synthetic MUSIC-AVQA in the release layout (real mp4 videos with audio), for tests and CPU runs.

Usage::

    python scripts/make_synthetic_avqa.py ROOT [--num-videos 170] [--questions-per-video 4] [--seconds 2] [--seed 0]

then ``python scripts/prepare_avqa.py ROOT --seconds 2``. The set, its layout and why its answers need the audio,
the frames and the question: :mod:`cola.data.synthetic.avqa`; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/make_synthetic_avqa.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.data.synthetic.avqa import make_synthetic_avqa  # noqa: E402

log = logging.getLogger("make_synthetic_avqa")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "root",
        type=Path,
        help="folder to create (question files + MUSIC-AVQA-videos-Real/ and MUCIS-AVQA-videos-Synthetic/)",
    )
    parser.add_argument("--num-videos", type=int, default=170, help="number of videos (default 170)")
    parser.add_argument("--questions-per-video", type=int, default=4, help="questions per video (default 4)")
    parser.add_argument("--seconds", type=int, default=2, help="video length in seconds (default 2)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--fps", type=int, default=8, help="video frame rate (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace ROOT if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        make_synthetic_avqa(
            args.root,
            num_videos=args.num_videos,
            questions_per_video=args.questions_per_video,
            seconds=args.seconds,
            seed=args.seed,
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
