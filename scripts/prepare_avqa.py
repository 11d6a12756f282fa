"""Prepares the MUSIC-AVQA release for training: one frame per second and a 16 kHz mono wav per video
(docs/data.md#preparing-music-avqa).

Usage::

    python scripts/prepare_avqa.py ROOT [--workers N] [--seconds 60]

ROOT holds avqa-train.json, avqa-val.json, avqa-test.json and the videos in the release's two folders,
MUSIC-AVQA-videos-Real/ and MUCIS-AVQA-videos-Synthetic/ (sic: the release misspells it; MUSIC-AVQA-videos-Synthetic/
or one MUSIC-AVQA-Videos/ are accepted too). What it writes and how a run resumes: :mod:`cola.data.avqa_prepare`
(the decoding and the resumable driver are AVE's, :mod:`cola.data.ave_prepare`). The last line printed sums up
what each video folder held, e.g. ``MUSIC-AVQA-videos-Real: 12 videos, MUCIS-AVQA-videos-Synthetic: 8 videos,
prepared 20, unreadable 0, missing 0`` (missing: question-file video ids without an mp4).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/prepare_avqa.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.data.ave_prepare import JPEG_QUALITY, format_report  # noqa: E402
from cola.data.avqa_prepare import NUM_SECONDS, folder_summary, prepare_avqa  # noqa: E402

log = logging.getLogger("prepare_avqa")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the MUSIC-AVQA folder (question files + video folders)")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel processes (default: CPUs, max 8)"
    )
    parser.add_argument("--seconds", type=int, default=NUM_SECONDS, help=f"seconds per video (default {NUM_SECONDS})")
    parser.add_argument("--frames-per-second", type=int, default=1, help="frames per second of video (default 1)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, help=f"default {JPEG_QUALITY}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = prepare_avqa(
            args.root,
            workers=args.workers,
            seconds=args.seconds,
            frames_per_second=args.frames_per_second,
            jpeg_quality=args.jpeg_quality,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2
    console = Console(highlight=False, soft_wrap=True)  # no hard wraps: greppable in logs
    console.print(format_report(report))
    console.print(folder_summary(report))  # last: a video folder that was not found shows at once
    return 0


if __name__ == "__main__":
    sys.exit(main())
