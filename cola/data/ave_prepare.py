"""Prepares the AVE release for training: one frame per second and a 16 kHz wav per video, with the source's
channels (docs/data.md#preparing-ave).

From Python: ``prepare_ave(root, workers=8)``; command line (same options)::

    python scripts/prepare_ave.py ROOT [--workers N] [--frames-per-second 1]

``ROOT`` is the release's ``AVE_Dataset/`` folder (``AVE/<video_id>.mp4`` + annotation files). For each
video, PyAV decodes

- ``ROOT/frames/<video_id>/<t>.jpg``, t = 0..9 (0-based: file ``t`` stands for second ``[t, t + 1)`` and the
  annotation row's ``Start <= t < End``): the frame nearest the centre ``t + 0.5 s`` among the frames
  whose timestamps fall in that second. With ``--frames-per-second K > 1`` the frames go to a separate
  folder, ``ROOT/frames_<K>fps/<video_id>/<t>_<k>.jpg``, k = 0..K-1, nearest the centres of the K equal
  parts of second t (the training code reads ``frames/``);
- ``ROOT/audio/<video_id>.wav``: the first 10 s of the audio track resampled to 16 kHz with PyAV's
  ``AudioResampler`` (libswresample), every source channel kept (not averaged: the data module picks channel 0,
  as the official loader, or the mean, ``data.audio_channel``), 16-bit PCM.
  ``ROOT/audio/channels.txt`` records that (``source``; MUSIC-AVQA's preparation, sharing this code, writes
  ``mean``: its wavs are averaged to mono).

A video shorter than 10 s is padded: a second without a frame repeats the last earlier frame (the first
later one at the very start), missing audio is zeros; such videos are listed as ``short``. A video that
cannot be opened or has no decodable video or audio is listed as ``unreadable`` and gets no outputs, so
the data module drops its rows with a warning.

Resumable: every output is written under a temporary name and renamed when complete, and a video whose
frames and wav all exist is skipped, so an interrupted run continues where it stopped. Wavs written in the other
channel layout than ``channels.txt`` asks for (a folder prepared before the wavs kept their channels has mono wavs
and no ``channels.txt``) are not skipped: a rerun decodes those videos again, and ``channels.txt`` changes only
once all of them are rewritten. The final report
(printed and written to ``ROOT/prepare_report.json``) counts prepared, skipped, short and unreadable videos
and the annotated ids without an mp4. The decoding (:func:`decode_video`) and the resumable driver
(:func:`prepare_videos`) take the number of seconds and are shared with MUSIC-AVQA (:mod:`cola.data.avqa_prepare`).
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import av
import numpy as np
import soundfile as sf
from PIL import Image

from cola.data.ave import (
    AUDIO_DIR,
    CHANNELS_FILE,
    FRAMES_DIR,
    NUM_SECONDS,
    PREPARE_REPORT,
    SPLIT_FILES,
    VIDEO_DIR,
    audio_path,
    parse_annotations,
    prepared_channels,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
SHORT_AUDIO_TOLERANCE_S = 0.1  # AAC priming/padding can trim a few ms; only real gaps count as short
TMP_PREFIX = ".tmp-"
JPEG_QUALITY = 95
MAX_LISTED = 10  # entries of each kind printed in the summary (the json has all)


class UnreadableVideoError(ValueError):
    """A video that cannot be opened or has no decodable video or audio."""


def frames_dir(root: Path, frames_per_second: int = 1) -> Path:
    """``ROOT/frames`` (one frame per second, what training reads) or ``ROOT/frames_<K>fps``."""
    return root / (FRAMES_DIR if frames_per_second == 1 else f"{FRAMES_DIR}_{frames_per_second}fps")


def frame_names(frames_per_second: int, num_seconds: int = NUM_SECONDS) -> list[str]:
    """The jpg names of one video: ``<t>.jpg`` (K = 1) or ``<t>_<k>.jpg``, t = 0..num_seconds-1."""
    if frames_per_second == 1:
        return [f"{t}.jpg" for t in range(num_seconds)]
    return [f"{t}_{k}.jpg" for t in range(num_seconds) for k in range(frames_per_second)]


def is_prepared(root: Path, video_id: str, frames_per_second: int = 1, num_seconds: int = NUM_SECONDS) -> bool:
    """All frames and the wav of a video exist (outputs are renamed into place only when complete)."""
    folder = frames_dir(root, frames_per_second) / video_id
    names = frame_names(frames_per_second, num_seconds)
    return audio_path(root, video_id).is_file() and all((folder / n).is_file() for n in names)


# ---------------------------------------------------------------------------------------------- decoding
def decode_video(
    mp4: Path,
    *,
    frames_per_second: int = 1,
    threads: int = 0,
    num_seconds: int = NUM_SECONDS,
    keep_channels: bool = False,
) -> dict[str, Any]:
    """Decodes the frames nearest the interval centres and the 16 kHz audio of the first seconds of a video.

    Args:
        mp4: the video file.
        frames_per_second: K frames per second (K equal parts of each second).
        threads: decoder threads (0: FFmpeg's choice).
        num_seconds: S seconds decoded (AVE: 10; MUSIC-AVQA: 60).
        keep_channels: keep every channel of the audio track (AVE), or average them to mono (False).

    Returns:
        ``{"frames": [(H, W, 3) uint8] * S K, "audio": (S * 16000, C) float32 (C: the track's channels with
        ``keep_channels``, else 1), "padded_frames": [interval indices], "video_seconds": float, "audio_seconds":
        float, "decode_error": str | None}``.

    Raises:
        UnreadableVideoError: the file cannot be opened, or no video frame or audio sample decodes.

    One procedure over a video's streams (PyAV decode, frame sampling per second, audio resampling, the error paths
    of a broken file), kept whole so every early exit is visible in one place.
    """
    k = frames_per_second
    num = num_seconds * k
    best: list[tuple[float, av.VideoFrame] | None] = [None] * num
    first_frame: av.VideoFrame | None = None
    last_time = 0.0
    chunks: list[np.ndarray] = []
    decode_error: str | None = None
    try:
        container = av.open(str(mp4))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise UnreadableVideoError(f"cannot open: {err}") from err
    with container:
        if not container.streams.video:
            raise UnreadableVideoError("no video stream")
        if not container.streams.audio:
            raise UnreadableVideoError("no audio stream")
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        vstream.thread_type = "AUTO"
        vstream.codec_context.thread_count = threads
        start = float(vstream.start_time * vstream.time_base) if vstream.start_time is not None else 0.0
        rate = float(vstream.average_rate) if vstream.average_rate else 25.0
        resampler: av.AudioResampler | None = None
        count = 0
        try:
            for packet in container.demux(vstream, astream):
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        t = (frame.time - start) if frame.time is not None else count / rate
                        count += 1
                        if first_frame is None:
                            first_frame = frame
                        last_time = max(last_time, t + 1.0 / rate)
                        i = math.floor(t * k)
                        if 0 <= i < num:
                            dist = abs(t - (i + 0.5) / k)
                            if best[i] is None or dist < best[i][0]:
                                best[i] = (dist, frame)
                    elif isinstance(frame, av.AudioFrame):
                        if resampler is None:
                            resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=SAMPLE_RATE)
                        chunks.extend(f.to_ndarray() for f in resampler.resample(frame))  # (C, n) each
            if resampler is not None:
                chunks.extend(f.to_ndarray() for f in resampler.resample(None))
        except (av.FFmpegError, ValueError) as err:  # keep what decoded before a corrupt packet
            decode_error = f"{type(err).__name__}: {err}"
    if first_frame is None:
        raise UnreadableVideoError(f"no video frame decodes{f' ({decode_error})' if decode_error else ''}")
    if not chunks:
        raise UnreadableVideoError(f"no audio sample decodes{f' ({decode_error})' if decode_error else ''}")
    frames: list[np.ndarray] = []
    padded: list[int] = []
    previous: av.VideoFrame | None = None
    for i in range(num):
        if best[i] is not None:
            previous = best[i][1]
        else:
            padded.append(i)
            if previous is None:  # nothing earlier: the first frame of the video
                previous = next((b[1] for b in best if b is not None), first_frame)
        frames.append(previous.to_ndarray(format="rgb24"))  # (H, W, 3)
    track = np.concatenate(chunks, axis=1)  # (C, n): the resampler keeps the source's channel layout
    if not keep_channels:
        track = track.mean(axis=0, keepdims=True)  # (1, n)
    audio_seconds = track.shape[1] / SAMPLE_RATE
    total = num_seconds * SAMPLE_RATE
    audio = np.zeros((total, track.shape[0]), dtype=np.float32)  # (N, C): soundfile's frames x channels
    audio[: min(total, track.shape[1])] = np.clip(track[:, :total].T, -1.0, 1.0)
    return {
        "frames": frames,
        "audio": audio,
        "padded_frames": padded,
        "video_seconds": round(last_time, 3),
        "audio_seconds": round(audio_seconds, 3),
        "decode_error": decode_error,
    }


def _write_outputs(root: Path, video_id: str, decoded: dict[str, Any], frames_per_second: int, quality: int) -> None:
    """Writes the jpgs and the wav under temporary names, then renames them into place."""
    frames_root, audio_root = frames_dir(root, frames_per_second), root / AUDIO_DIR
    tag = f"{TMP_PREFIX}{video_id}-{os.getpid()}"
    tmp_dir = frames_root / tag
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)
    names = frame_names(frames_per_second, len(decoded["frames"]) // frames_per_second)
    for name, frame in zip(names, decoded["frames"], strict=True):
        Image.fromarray(frame).save(tmp_dir / name, format="JPEG", quality=quality)
    final_dir = frames_root / video_id
    if final_dir.exists():  # an incomplete folder (outputs are renamed only when complete)
        shutil.rmtree(final_dir)
    os.replace(tmp_dir, final_dir)
    tmp_wav = audio_root / f"{tag}.wav"
    sf.write(str(tmp_wav), decoded["audio"], SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp_wav, audio_path(root, video_id))


def prepare_one(args: tuple[str, str, int, int, int, int, bool, bool]) -> dict[str, Any]:
    """Pool worker: prepares one video (``(mp4, root, frames_per_second, jpeg_quality, threads, num_seconds,
    keep_channels, redo)``; ``redo``: decode it even when its outputs exist); never raises (failures come back as
    ``status: unreadable``)."""
    mp4_s, root_s, frames_per_second, quality, threads, num_seconds, keep_channels, redo = args
    mp4, root = Path(mp4_s), Path(root_s)
    video_id = mp4.stem
    record: dict[str, Any] = {"video_id": video_id}
    if not redo and is_prepared(root, video_id, frames_per_second, num_seconds):
        return {**record, "status": "skipped"}
    try:
        decoded = decode_video(
            mp4,
            frames_per_second=frames_per_second,
            threads=threads,
            num_seconds=num_seconds,
            keep_channels=keep_channels,
        )
        _write_outputs(root, video_id, decoded, frames_per_second, quality)
    except Exception as err:  # a worker must not take the pool down; the report names the video
        return {**record, "status": "unreadable", "error": f"{type(err).__name__}: {err}"}
    short = (
        decoded["padded_frames"]
        or decoded["audio_seconds"] < num_seconds - SHORT_AUDIO_TOLERANCE_S
        or decoded["decode_error"]
    )
    record["status"] = "prepared"
    if short:
        record["short"] = {
            "video_id": video_id,
            "video_seconds": decoded["video_seconds"],
            "audio_seconds": decoded["audio_seconds"],
            "padded_frames": decoded["padded_frames"],
            "padded_audio_seconds": round(max(0.0, num_seconds - decoded["audio_seconds"]), 3),
            "decode_error": decoded["decode_error"],
        }
    return record


# ---------------------------------------------------------------------------------------------- driver
def annotated_ids(paths: Iterable[Path], parse: Callable[[Path], Iterable[Any]]) -> tuple[set[str], list[str]]:
    """Video ids named by the annotation files among ``paths`` that exist (``parse`` reads one file into items with
    a ``video_id``), and the parse problems (reported, never fatal: the videos are prepared anyway)."""
    ids: set[str] = set()
    problems: list[str] = []
    for path in paths:
        if path.is_file():
            try:
                ids.update(r.video_id for r in parse(path))
            except ValueError as err:
                problems.append(str(err))
    return ids, problems


def _annotated_ids(root: Path) -> tuple[set[str], list[str]]:
    """Video ids named by Annotations.txt and the split files (those present), and parse problems."""
    return annotated_ids([root / n for n in ("Annotations.txt", *SPLIT_FILES.values())], parse_annotations)


def _cleanup_temporaries(root: Path, frames_per_second: int) -> None:
    """Removes leftovers of an interrupted run (temporary names are never read)."""
    for folder in (frames_dir(root, frames_per_second), root / AUDIO_DIR):
        for p in folder.glob(f"{TMP_PREFIX}*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def check_prepare_args(workers: int, frames_per_second: int, num_seconds: int = NUM_SECONDS) -> None:
    """Raises ``ValueError`` naming the command-line option of a value out of range."""
    for option, value in (
        ("--workers", workers),
        ("--frames-per-second", frames_per_second),
        ("--seconds", num_seconds),
    ):
        if int(value) < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")


def prepare_ave(
    root: str | os.PathLike,
    *,
    workers: int = 1,
    frames_per_second: int = 1,
    jpeg_quality: int = JPEG_QUALITY,
    progress: bool = True,
) -> dict[str, Any]:
    """Decodes every ``ROOT/AVE/*.mp4`` into frames and a wav (resumable) and writes the report.

    Args:
        root: the ``AVE_Dataset`` folder.
        workers: parallel processes (1: in this process).
        frames_per_second: frames per second of video (the training code reads 1).
        jpeg_quality: JPEG quality of the frames.
        progress: show a rich progress bar.

    Returns:
        The report of :func:`prepare_videos` (also written to ``ROOT/prepare_report.json``).

    Raises:
        FileNotFoundError: ``ROOT/AVE/`` does not exist or holds no mp4.
        ValueError: a parameter out of range.
    """
    root = Path(root)
    check_prepare_args(workers, frames_per_second)
    video_dir = root / VIDEO_DIR
    if not video_dir.is_dir():
        raise FileNotFoundError(
            f"{video_dir} not found: ROOT must be the AVE_Dataset folder of the release (AVE/<video_id>.mp4, "
            f"Annotations.txt, trainSet.txt, valSet.txt, testSet.txt)"
        )
    videos = sorted(video_dir.glob("*.mp4"))
    if not videos:
        raise FileNotFoundError(f"no .mp4 file in {video_dir}")
    return prepare_videos(
        root,
        videos,
        annotated=lambda: _annotated_ids(root),
        label="AVE",
        keep_channels=True,  # the data module picks channel 0 (official) or the mean: data.audio_channel
        workers=workers,
        frames_per_second=frames_per_second,
        jpeg_quality=jpeg_quality,
        progress=progress,
    )


def prepare_videos(
    root: Path,
    videos: list[Path],
    *,
    annotated: Callable[[], tuple[set[str], list[str]]],
    label: str,
    num_seconds: int = NUM_SECONDS,
    workers: int = 1,
    frames_per_second: int = 1,
    jpeg_quality: int = JPEG_QUALITY,
    progress: bool = True,
    keep_channels: bool = False,
) -> dict[str, Any]:
    """Decodes ``videos`` into ``ROOT/frames/<id>/`` and ``ROOT/audio/<id>.wav`` (resumable), writes the report.

    The dataset-independent part of :func:`prepare_ave` (also :func:`cola.data.avqa_prepare.prepare_avqa`).

    Args:
        root: the dataset folder (outputs go to its ``frames/`` and ``audio/``).
        videos: the mp4 files (the stem is the video id).
        annotated: returns the video ids the annotations name and their parse problems (reported).
        label: the dataset's name in the report.
        num_seconds: seconds decoded per video (shorter videos are padded and listed as ``short``).
        workers: parallel processes (1: in this process).
        frames_per_second: frames per second of video (the training code reads 1).
        jpeg_quality: JPEG quality of the frames.
        progress: show a rich progress bar.
        keep_channels: write the wavs with the source's channels (``audio/channels.txt``: ``source``) or
            averaged to mono (``mean``). Wavs already there in the other layout are written again: every video is
            decoded, and ``channels.txt`` changes after the last one.

    Returns:
        The report (also written to ``ROOT/prepare_report.json``): ``dataset``, ``seconds``, ``audio_channels``
        (``source`` | ``mean``: the layout of the folder's wavs), ``videos``, ``prepared``, ``skipped``,
        ``unreadable`` (list of ``{video_id, error}``), ``short`` (list of ``{video_id, video_seconds,
        audio_seconds, padded_frames, padded_audio_seconds, decode_error}``), ``annotated_without_video``.

    The resumable preparation loop (skip done videos, worker pool, per-video report, atomic publish) in one piece: splitting it would scatter the resume invariants.
    """
    frames_dir(root, frames_per_second).mkdir(exist_ok=True)
    (root / AUDIO_DIR).mkdir(exist_ok=True)
    _cleanup_temporaries(root, frames_per_second)
    t0 = time.time()
    channels = "source" if keep_channels else "mean"
    existing = prepared_channels(root)
    # wavs in the other layout are decoded again; the marker says the new layout only once none is left, so an
    # interrupted conversion is redone rather than trusted
    redo = existing is not None and existing != channels
    if redo:
        log.warning(
            "%s: the wavs in %s are %s; writing them again %s (every video is decoded again)",
            label,
            root / AUDIO_DIR,
            "averaged to mono" if existing == "mean" else "multi-channel",
            "with the source's channels" if keep_channels else "averaged to mono",
        )
    else:
        _write_channels(root, channels)
    threads = 0 if workers == 1 else 1  # one decoder thread per process when processes run in parallel
    jobs = [
        (str(p), str(root), int(frames_per_second), int(jpeg_quality), threads, int(num_seconds), keep_channels, redo)
        for p in videos
    ]
    records: list[dict[str, Any]] = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"prepare {label}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("videos", total=len(jobs))
        if workers == 1:
            for job in jobs:
                records.append(prepare_one(job))
                bar.advance(task)
        else:
            # spawned, not forked: a fork copies the parent's threads' locks (torch/OpenMP pools, logging, a live
            # progress bar) and a child can block on one forever; a spawned worker starts from a clean interpreter
            with multiprocessing.get_context("spawn").Pool(int(workers)) as pool:
                for record in pool.imap_unordered(prepare_one, jobs, chunksize=1):
                    records.append(record)
                    bar.advance(task)
    records.sort(key=lambda r: r["video_id"])
    if redo:
        _finish_conversion(root, channels, {r["video_id"] for r in records if r["status"] == "prepared"}, label)
    # a skipped video's padding was reported by the run that prepared it
    previous: dict[str, dict[str, Any]] = {}
    report_path = root / PREPARE_REPORT
    if report_path.is_file():
        try:
            previous = {s["video_id"]: s for s in json.loads(report_path.read_text()).get("short", [])}
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
            previous = {}
    short = [
        r["short"] if r["status"] == "prepared" else previous[r["video_id"]]
        for r in records
        if r.get("short") or (r["status"] == "skipped" and r["video_id"] in previous)
    ]
    annotated_ids, problems = annotated()
    without_video = sorted(annotated_ids - {p.stem for p in videos})
    report = {
        "dataset": label,
        "root": str(root),
        "frames_per_second": int(frames_per_second),
        "seconds": int(num_seconds),
        "sample_rate": SAMPLE_RATE,
        "audio_channels": prepared_channels(root) or channels,  # the folder's wavs: the old layout if any is left
        "videos": len(videos),
        "prepared": sum(r["status"] == "prepared" for r in records),
        "skipped": sum(r["status"] == "skipped" for r in records),
        "unreadable": [
            {"video_id": r["video_id"], "error": r["error"]} for r in records if r["status"] == "unreadable"
        ],
        "short": short,
        "annotated_without_video": without_video,
        "annotation_problems": problems,
        "time_s": round(time.time() - t0, 2),
    }
    tmp = root / f"{TMP_PREFIX}{PREPARE_REPORT}"
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, report_path)
    return report


def _write_channels(root: Path, channels: str) -> None:
    """Writes ``ROOT/audio/channels.txt`` (atomically; untouched when it already says ``channels``)."""
    marker = root / AUDIO_DIR / CHANNELS_FILE
    if marker.is_file() and marker.read_text().strip() == channels:
        return
    tmp = root / AUDIO_DIR / f"{TMP_PREFIX}{CHANNELS_FILE}"
    tmp.write_text(channels + "\n")
    os.replace(tmp, marker)


def _finish_conversion(root: Path, channels: str, rewritten: set[str], label: str) -> None:
    """After a run that rewrote wavs of the other layout: marks the folder ``channels`` when every wav in it was
    rewritten, else warns (wavs without an mp4 or whose video no longer decodes keep the old layout)."""
    with os.scandir(root / AUDIO_DIR) as entries:
        stale = sorted(
            e.name[: -len(".wav")]
            for e in entries
            if e.name.endswith(".wav") and not e.name.startswith(".") and e.name[: -len(".wav")] not in rewritten
        )
    if not stale:
        _write_channels(root, channels)
        return
    log.warning(
        "%s: %d wav(s) in %s could not be written again (no mp4, or the video no longer decodes), e.g. %s; the "
        "folder stays marked as before (%s)",
        label,
        len(stale),
        root / AUDIO_DIR,
        stale[:MAX_LISTED],
        root / AUDIO_DIR / CHANNELS_FILE,
    )


def format_report(report: dict[str, Any]) -> str:
    """A short human summary of :func:`prepare_ave`'s report (one line, then one per listed problem)."""
    lines = [
        f"{report.get('dataset', 'AVE')} prepared in {report['root']}: {report['videos']} videos, {report['prepared']} prepared now, "
        f"{report['skipped']} already prepared, {len(report['short'])} short (padded), "
        f"{len(report['unreadable'])} unreadable ({report['time_s']} s)"
    ]
    lines += [f"  unreadable {e['video_id']}: {e['error']}" for e in report["unreadable"][:MAX_LISTED]]
    lines += [
        f"  short {e['video_id']}: video {e['video_seconds']} s, audio {e['audio_seconds']} s, "
        f"padded frames {e['padded_frames']}"
        for e in report["short"][:MAX_LISTED]
    ]
    if report["annotated_without_video"]:
        ids = report["annotated_without_video"]
        lines.append(f"  {len(ids)} annotated video id(s) have no mp4, e.g. {ids[:MAX_LISTED]}")
    lines += [f"  annotation problem: {problem}" for problem in report["annotation_problems"]]
    lines.append(f"report: {Path(report['root']) / PREPARE_REPORT}")
    return "\n".join(lines)
