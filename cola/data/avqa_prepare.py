"""Prepares the MUSIC-AVQA release for training: one frame per second and a 16 kHz mono wav per video
(docs/data.md#preparing-music-avqa).

From Python: ``prepare_avqa(root, workers=8)``; command line (same options)::

    python scripts/prepare_avqa.py ROOT [--workers N] [--seconds 60]

``ROOT`` holds the question files (``avqa-train.json``, ``avqa-val.json``, ``avqa-test.json``) and the videos in
``MUSIC-AVQA-videos-Real/`` and ``MUSIC-AVQA-videos-Synthetic/`` (the two downloads of the release), or all of
them in one ``MUSIC-AVQA-Videos/`` (what the official README suggests). Every video becomes

- ``ROOT/frames/<video_id>/<t>.jpg``, t = 0..S-1 (S = ``--seconds``, 60 by default: the official 1-fps
  frames and 60 feature rows per video): the frame nearest the centre of second t;
- ``ROOT/audio/<video_id>.wav``: the first S seconds of the audio track at 16 kHz, mono, 16-bit PCM;

decoded exactly as AVE's videos (:func:`cola.data.ave_prepare.decode_video`; shorter videos are padded and
listed as ``short``, undecodable ones as ``unreadable`` and get no outputs, so the data module drops their
questions with a warning). Resumable and reported (``ROOT/prepare_report.json``, whose ``seconds`` the data
module reads) by the same driver as AVE (:func:`cola.data.ave_prepare.prepare_videos`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cola.data.ave_prepare import JPEG_QUALITY, annotated_ids, check_prepare_args, prepare_videos
from cola.data.avqa import VIDEO_DIRS
from cola.data.avqa_annotations import SPLIT_FILES, parse_questions

__all__ = ["NUM_SECONDS", "find_videos", "prepare_avqa"]

NUM_SECONDS = 60  # official: 60 one-second segments per video


def find_videos(root: Path) -> list[Path]:
    """The mp4 files of every video folder of :data:`cola.data.avqa.VIDEO_DIRS` under ``root``, sorted by id.

    Raises:
        FileNotFoundError: no video folder, or no mp4 in them.
        ValueError: one video id in two folders.
    """
    folders = [root / d for d in VIDEO_DIRS if (root / d).is_dir()]
    if not folders:
        raise FileNotFoundError(
            f"no video folder under {root}: expected {' and/or '.join(VIDEO_DIRS[:2])} (or {VIDEO_DIRS[2]}) holding "
            "<video_id>.mp4, beside avqa-train.json, avqa-val.json, avqa-test.json"
        )
    videos: dict[str, Path] = {}
    for folder in folders:
        for mp4 in sorted(folder.glob("*.mp4")):
            if mp4.stem in videos:
                raise ValueError(f"video id {mp4.stem} is in two folders: {videos[mp4.stem]} and {mp4}")
            videos[mp4.stem] = mp4
    if not videos:
        raise FileNotFoundError(f"no .mp4 file in {', '.join(str(f) for f in folders)}")
    return [videos[k] for k in sorted(videos)]


def prepare_avqa(
    root: str | os.PathLike,
    *,
    workers: int = 1,
    seconds: int = NUM_SECONDS,
    frames_per_second: int = 1,
    jpeg_quality: int = JPEG_QUALITY,
    progress: bool = True,
) -> dict[str, Any]:
    """Decodes every video of the release at ``root`` into frames and a wav (resumable) and writes the report.

    Args:
        root: the MUSIC-AVQA folder (question files + video folders).
        workers: parallel processes (1: in this process).
        seconds: seconds decoded per video (60: the whole ~60-s videos, as official).
        frames_per_second: frames per second of video (the training code reads 1; more go to ``frames_<K>fps/``).
        jpeg_quality: JPEG quality of the frames.
        progress: show a rich progress bar.

    Returns:
        The report of :func:`cola.data.ave_prepare.prepare_videos` (``dataset: MUSIC-AVQA``, ``seconds``, counts,
        ``unreadable``, ``short``, ``annotated_without_video``), also in ``ROOT/prepare_report.json``.

    Raises:
        FileNotFoundError: no video folder or no mp4 under ``root``.
        ValueError: a parameter out of range, or a video id in two folders.
    """
    root = Path(root)
    check_prepare_args(workers, frames_per_second, seconds)
    return prepare_videos(
        root,
        find_videos(root),
        annotated=lambda: annotated_ids([root / n for n in SPLIT_FILES.values()], parse_questions),
        label="MUSIC-AVQA",
        num_seconds=int(seconds),
        workers=int(workers),
        frames_per_second=int(frames_per_second),
        jpeg_quality=jpeg_quality,
        progress=progress,
    )
