"""Prepares the AVE release for training: one frame per second and a 16 kHz wav per video, with the source's
channels (docs/data.md#preparing-ave).

Usage::

    python scripts/prepare_ave.py ROOT [--workers N] [--frames-per-second 1]

What it writes (frames, 16 kHz wavs with every source channel, ``ROOT/prepare_report.json``), the padding of short
videos and how a run resumes (a folder prepared when the wavs were averaged to mono gets them rewritten):
:mod:`cola.data.ave_prepare`.

The work is done by :func:`cola.data.ave_prepare.prepare_ave`; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/prepare_ave.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.data.ave_prepare import JPEG_QUALITY, format_report, prepare_ave  # noqa: E402

log = logging.getLogger("prepare_ave")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the AVE_Dataset folder (holds AVE/*.mp4 and the annotation files)")
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="parallel processes (default: CPUs, max 8)"
    )
    parser.add_argument("--frames-per-second", type=int, default=1, help="frames per second of video (default 1)")
    parser.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, help=f"default {JPEG_QUALITY}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = prepare_ave(
            args.root,
            workers=args.workers,
            frames_per_second=args.frames_per_second,
            jpeg_quality=args.jpeg_quality,
            progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError) as err:
        log.error("%s", err)
        return 2
    console = Console(highlight=False, soft_wrap=True)  # no hard wraps: lines stay greppable in logs
    for line in format_report(report).splitlines():
        console.print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
