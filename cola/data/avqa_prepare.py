"""Prepares the MUSIC-AVQA release for training: one frame per second and a 16 kHz mono wav per video
(docs/data.md#preparing-music-avqa).

From Python: ``prepare_avqa(root, workers=8)``; command line (same options)::

    python scripts/prepare_avqa.py ROOT [--workers N] [--seconds 60]

``ROOT`` holds the question files (``avqa-train.json``, ``avqa-val.json``, ``avqa-test.json``) and the videos in
the two folders the release unpacks, ``MUSIC-AVQA-videos-Real/`` and ``MUCIS-AVQA-videos-Synthetic/`` (sic: the
release misspells it); ``MUSIC-AVQA-videos-Synthetic/`` (spelt correctly) and one ``MUSIC-AVQA-Videos/`` holding
every video (what the official README suggests) are accepted too (:data:`cola.data.avqa.VIDEO_DIRS`). Every
video becomes

- ``ROOT/frames/<video_id>/<t>.jpg``, t = 0..S-1 (S = ``--seconds``, 60 by default: the official 1-fps
  frames and 60 feature rows per video): the frame nearest the centre of second t;
- ``ROOT/audio/<video_id>.wav``: the first S seconds of the audio track at 16 kHz, mono, 16-bit PCM;

decoded exactly as AVE's videos (:func:`cola.data.ave_prepare.decode_video`; shorter videos are padded and
listed as ``short``, undecodable ones as ``unreadable`` and get no outputs, so the data module drops their
questions with a warning). Resumable and reported (``ROOT/prepare_report.json``, whose ``seconds`` the data
module reads) by the same driver as AVE (:func:`cola.data.ave_prepare.prepare_videos`); the report also holds
``video_folders``, the number of mp4 files read from each video folder, and :func:`folder_summary` turns it into
the one line the script ends with (``MUSIC-AVQA-videos-Real: 12 videos, MUCIS-AVQA-videos-Synthetic: 8 videos,
prepared 20, unreadable 0, missing 0``), so a folder that was not found shows at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cola.data.ave import PREPARE_REPORT
from cola.data.ave_prepare import JPEG_QUALITY, annotated_ids, check_prepare_args, prepare_videos
from cola.data.avqa import (
    REAL_VIDEO_DIR,
    SINGLE_VIDEO_DIR,
    SYNTHETIC_VIDEO_DIR,
    SYNTHETIC_VIDEO_DIR_CORRECTED,
    VIDEO_DIRS,
)
from cola.data.avqa_annotations import SPLIT_FILES, parse_questions
from cola.io import atomic_write_text

__all__ = ["NUM_SECONDS", "find_videos", "folder_summary", "prepare_avqa", "video_folders"]

NUM_SECONDS = 60  # official: 60 one-second segments per video


def video_folders(root: Path) -> dict[str, list[Path]]:
    """The mp4 files (sorted) of each folder of :data:`cola.data.avqa.VIDEO_DIRS` present under ``root``, by name."""
    return {d: sorted((root / d).glob("*.mp4")) for d in VIDEO_DIRS if (root / d).is_dir()}


def find_videos(root: Path) -> list[Path]:
    """The mp4 files of every video folder of :data:`cola.data.avqa.VIDEO_DIRS` under ``root``, sorted by id.

    Raises:
        FileNotFoundError: no video folder, or no mp4 in them.
        ValueError: one video id in two folders.
    """
    folders = video_folders(root)
    if not folders:
        raise FileNotFoundError(
            f"no video folder under {root}: expected the release's {REAL_VIDEO_DIR} and {SYNTHETIC_VIDEO_DIR} "
            f"(sic: MUCIS) holding <video_id>.mp4 (also accepted: {SYNTHETIC_VIDEO_DIR_CORRECTED}, or one "
            f"{SINGLE_VIDEO_DIR}), beside avqa-train.json, avqa-val.json, avqa-test.json"
        )
    videos: dict[str, Path] = {}
    for mp4s in folders.values():
        for mp4 in mp4s:
            if mp4.stem in videos:
                raise ValueError(f"video id {mp4.stem} is in two folders: {videos[mp4.stem]} and {mp4}")
            videos[mp4.stem] = mp4
    if not videos:
        raise FileNotFoundError(f"no .mp4 file in {', '.join(str(root / f) for f in folders)}")
    return [videos[k] for k in sorted(videos)]


def folder_summary(report: dict[str, Any]) -> str:
    """One line: the videos found in each video folder, then how many are prepared (now or before), unreadable and
    missing (ids of the question files without an mp4 in any folder).

    A release folder found under no accepted name is listed as ``not found`` (unless the single-folder layout
    ``MUSIC-AVQA-Videos/`` is used), e.g. ``MUSIC-AVQA-videos-Real: 12 videos, MUCIS-AVQA-videos-Synthetic: not
    found, prepared 12, unreadable 0, missing 8``.

    Args:
        report: the report of :func:`prepare_avqa` (its ``video_folders``, ``prepared``, ``skipped``,
            ``unreadable`` and ``annotated_without_video``).
    """
    found: dict[str, int] = report["video_folders"]
    parts = [f"{name}: {count} video{'s' * (count != 1)}" for name, count in found.items()]
    if SINGLE_VIDEO_DIR not in found:  # the release layout: both of its folders are expected
        if REAL_VIDEO_DIR not in found:
            parts.append(f"{REAL_VIDEO_DIR}: not found")
        if SYNTHETIC_VIDEO_DIR not in found and SYNTHETIC_VIDEO_DIR_CORRECTED not in found:
            parts.append(f"{SYNTHETIC_VIDEO_DIR}: not found")
    parts += [
        f"prepared {report['prepared'] + report['skipped']}",
        f"unreadable {len(report['unreadable'])}",
        f"missing {len(report['annotated_without_video'])}",
    ]
    return ", ".join(parts)


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
        ``unreadable``, ``short``, ``annotated_without_video``) with ``video_folders`` (``{folder name: number
        of mp4 files}`` for each video folder found), also in ``ROOT/prepare_report.json``; :func:`folder_summary`
        makes it one line.

    Raises:
        FileNotFoundError: no video folder or no mp4 under ``root``.
        ValueError: a parameter out of range, or a video id in two folders.
    """
    root = Path(root)
    check_prepare_args(workers, frames_per_second, seconds)
    videos = find_videos(root)
    counts = {name: len(mp4s) for name, mp4s in video_folders(root).items()}
    report = prepare_videos(
        root,
        videos,
        annotated=lambda: annotated_ids([root / n for n in SPLIT_FILES.values()], parse_questions),
        label="MUSIC-AVQA",
        num_seconds=int(seconds),
        workers=int(workers),
        frames_per_second=int(frames_per_second),
        jpeg_quality=jpeg_quality,
        progress=progress,
    )
    report["video_folders"] = counts
    atomic_write_text(root / PREPARE_REPORT, json.dumps(report, indent=1))
    return report
