"""Writes a small synthetic AVE in the official release layout (real mp4 videos), for tests and CPU runs.

From Python: ``make_synthetic_ave(root, num_videos=60, num_categories=5, seed=0)``; the harness calls
:func:`build_synthetic_ave` (generate, then prepare like the real data). Command line:
``python scripts/make_synthetic_ave.py ROOT [--num-videos 60] [--num-categories 5] [--seed 0]``.

``ROOT`` then looks like the release's ``AVE_Dataset/`` (docs/data.md#ave): ``AVE/<video_id>.mp4`` (10-s H.264
videos, 64 x 64 at 8 fps, with a stereo 44.1 kHz AAC track like the YouTube sources), ``Annotations.txt``
(with the release's header line ``Category&VideoID&Quality&Start&End``), ``trainSet.txt``, ``valSet.txt``,
``testSet.txt`` (no header), ``categories.txt`` and ``ReadMe.txt``. Prepare it like the real data with
``python scripts/prepare_ave.py ROOT``.

What makes it learnable: the events are the first ``--num-categories`` real AVE categories (the label space
stays the 28 events + background of :data:`cola.data.ave.AVE_CATEGORIES`). Each category has its own shape +
colour and its own tone (a fundamental and its octave). During the labelled seconds ``[Start, End)`` the
object drifts across the frame and its tone sounds; outside, the frame is a plain noisy background and the
audio is low noise. About half of the videos carry the event for the whole 10 s (two thirds in the release).
With 6 or more videos the set also mirrors two quirks of the release (both in the train split): a ``0&0`` row
(a video without event, all background) and a video annotated by two rows with different categories over the
same seconds (both objects and both tones present, as the release's duplicated ids).

The output is deterministic for a given seed and written atomically (into a temporary sibling folder renamed to
``ROOT`` at the end). ``ROOT/synthetic.json`` records the parameters and, per video, its rows and rendering.
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import string
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from cola.data.ave import AVE_CATEGORIES, HEADER, NUM_SECONDS, SPLIT_FILES
from cola.data.synthetic.folder import MANIFEST, keep_existing, publish, staging_folder
from cola.data.synthetic.shapes import draw_shape

log = logging.getLogger(__name__)

AUDIO_RATE = 44100  # what most AVE sources carry
SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring", "bar")  # one per category, cycled
ID_ALPHABET = string.ascii_letters + string.digits + "-_"  # YouTube id characters (ids may start with '-')
VERSION = 1


def category_style(index: int) -> dict[str, Any]:
    """Shape, RGB colour and tone of AVE category ``index`` (distinct for all 28)."""
    hue = (index * 0.618034) % 1.0  # golden-ratio hue steps keep neighbouring indices far apart
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return {
        "shape": SHAPES[index % len(SHAPES)],
        "colour": (int(r * 255), int(g * 255), int(b * 255)),
        "tone_hz": round(300.0 * 2.0 ** (index / 7.0), 2),  # 300 Hz .. 4.4 kHz, seven steps per octave
    }


def _split_sizes(n: int) -> dict[str, int]:
    """About 2/3 train, 1/6 val, 1/6 test, at least one video per split."""
    if n < 3:
        raise ValueError(f"num_videos must be at least 3 (one video per split), got {n}")
    n_eval = max(1, round(n / 6))
    return {"train": n - 2 * n_eval, "val": n_eval, "test": n_eval}


def _render_frames(video: dict[str, Any], size: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """(num_frames, size, size, 3) uint8: background noise, the event objects during [start, end)."""
    num_frames = NUM_SECONDS * fps
    base = np.asarray(video["background"], dtype=np.float32)  # (3,)
    grain = rng.normal(0.0, 6.0, size=(size, size, 1)).astype(np.float32)  # static grey grain (cheap to encode)
    frames = np.repeat(np.clip(base + grain, 0, 255).astype(np.uint8)[None], num_frames, axis=0)  # (F, S, S, 3)
    radius = 0.18 * size
    for i in range(num_frames):
        time = (i + 0.5) / fps  # a frame stands for the interval it covers; its centre decides visibility
        if not video["start"] <= time < video["end"]:
            continue
        img = Image.fromarray(frames[i])
        draw = ImageDraw.Draw(img)
        progress = i / max(1, num_frames - 1)
        for obj in video["objects"]:
            (x0, y0), (x1, y1) = obj["path"]
            cx, cy = (x0 + (x1 - x0) * progress) * size, (y0 + (y1 - y0) * progress) * size
            style = category_style(AVE_CATEGORIES.index(obj["category"]))
            draw_shape(draw, style["shape"], cx, cy, radius, tuple(style["colour"]))
        frames[i] = np.asarray(img)
    return frames


def _render_audio(video: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """(2, 10 * 44100) float32 stereo: low noise, the events' tones during [start, end) with 10 ms fades."""
    n = NUM_SECONDS * AUDIO_RATE
    t = np.arange(n, dtype=np.float64) / AUDIO_RATE
    mono = rng.normal(0.0, 0.02, size=n)
    a, b = int(video["start"] * AUDIO_RATE), int(video["end"] * AUDIO_RATE)
    if b > a:
        env = np.zeros(n)
        env[a:b] = 1.0
        fade = min(int(0.01 * AUDIO_RATE), (b - a) // 2)
        if fade > 0:
            ramp = np.linspace(0.0, 1.0, fade)
            env[a : a + fade] = ramp
            env[b - fade : b] = ramp[::-1]
        for obj in video["objects"]:
            f = category_style(AVE_CATEGORIES.index(obj["category"]))["tone_hz"]
            phase = obj["phase"]
            tone = np.sin(2 * np.pi * f * t + phase) + 0.5 * np.sin(4 * np.pi * f * t + phase)
            mono += 0.2 * env * tone
    gains = np.asarray(video["channel_gains"], dtype=np.float64)[:, None]  # (2, 1)
    return np.clip(gains * mono[None], -1.0, 1.0).astype(np.float32)  # (2, N)


def _write_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int) -> None:
    """Muxes H.264 video (MPEG-4 part 2 where libx264 is missing) and stereo AAC into ``path``; ``frames``
    (F, H, W, 3) uint8 at ``fps`` and ``audio`` (2, N) at 44.1 kHz cover the same whole seconds."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    options = {"preset": "ultrafast", "crf": "23", "threads": "1"} if codec == "libx264" else {"threads": "1"}
    with av.open(str(path), mode="w", format="mp4") as out:
        vstream = out.add_stream(codec, rate=Fraction(fps), options=options)
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        astream = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo", options={"aac_coder": "fast"})
        astream.bit_rate = 64000
        chunk = 1024  # AAC frame size
        audio_pts = 0
        for second in range(frames.shape[0] // fps):  # interleave one second of video and audio at a time
            for i in range(second * fps, (second + 1) * fps):
                frame = av.VideoFrame.from_ndarray(frames[i], format="rgb24")
                frame.pts = i
                for packet in vstream.encode(frame):
                    out.mux(packet)
            end = (second + 1) * AUDIO_RATE
            while audio_pts < end:
                piece = np.ascontiguousarray(audio[:, audio_pts : min(audio_pts + chunk, audio.shape[1])])
                aframe = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
                aframe.sample_rate = AUDIO_RATE
                aframe.pts = audio_pts
                for packet in astream.encode(aframe):
                    out.mux(packet)
                audio_pts += piece.shape[1]
        for stream in (vstream, astream):
            for packet in stream.encode(None):
                out.mux(packet)


def _plan(rng: np.random.Generator, num_videos: int, categories: list[str]) -> list[dict[str, Any]]:
    """Per video: id, split, rows (category, start, end), objects (category, path, phase) and background."""
    sizes = _split_sizes(num_videos)
    special = num_videos >= 6
    ids: set[str] = set()
    videos: list[dict[str, Any]] = []
    order = rng.permutation(len(categories)).tolist()
    splits = [s for s in ("train", "val", "test") for _ in range(sizes[s])]
    for j, split in enumerate(splits):
        vid = "".join(rng.choice(list(ID_ALPHABET), size=11).tolist())
        while vid in ids:
            vid = "".join(rng.choice(list(ID_ALPHABET), size=11).tolist())
        ids.add(vid)
        kind = "zero" if special and j == 0 else "double" if special and j == 1 else "event"
        cat = categories[order[j % len(categories)]]
        if kind == "zero":
            start = end = 0
        elif rng.random() < 0.5:
            start, end = 0, NUM_SECONDS
        else:
            start = int(rng.integers(0, NUM_SECONDS - 2))
            end = int(rng.integers(start + 2, NUM_SECONDS + 1))
        event_cats = [cat]
        if kind == "double":
            event_cats.append(categories[order[(j + 1) % len(categories)]])
        objects = []
        for k, c in enumerate(event_cats):
            # two objects keep to different halves of the frame so they never overlap
            y_lo, y_hi = (0.25, 0.75) if len(event_cats) == 1 else ((0.22, 0.3), (0.7, 0.78))[k]
            x0, x1 = rng.uniform(0.25, 0.75, size=2).tolist()
            y0, y1 = rng.uniform(y_lo, y_hi, size=2).tolist()
            objects.append({"category": c, "path": [[x0, y0], [x1, y1]], "phase": float(rng.uniform(0, 2 * np.pi))})
        h = float(rng.uniform(0, 1))
        background = [int(255 * v) for v in colorsys.hsv_to_rgb(h, 0.15, float(rng.uniform(0.2, 0.45)))]
        videos.append(
            {
                "video_id": vid,
                "split": split,
                "kind": kind,
                "start": start,
                "end": end,
                "rows": [{"category": c, "start": start, "end": end} for c in event_cats],
                "objects": objects if kind != "zero" else [],
                "background": background,
                "channel_gains": [1.0, float(rng.uniform(0.5, 1.0))],
                "noise_seed": int(rng.integers(2**31)),
            }
        )
    return videos


def _row_line(category: str, video_id: str, start: int, end: int) -> str:
    return f"{category}&{video_id}&good&{start}&{end}"


def _write_annotations(folder: Path, videos: list[dict[str, Any]]) -> list[str]:
    """Writes ``Annotations.txt`` (with the header line) and the split files; returns the annotation rows."""
    # the release groups rows by category (first-appearance order) and lists the 0&0 row apart
    ordered = sorted(
        (
            (AVE_CATEGORIES.index(r["category"]), v["kind"] == "zero"),
            _row_line(r["category"], v["video_id"], r["start"], r["end"]),
        )
        for v in videos
        for r in v["rows"]
    )
    all_lines = [line for (_, zero), line in ordered if not zero] + [line for (_, zero), line in ordered if zero]
    (folder / "Annotations.txt").write_text("&".join(HEADER) + "\n" + "\n".join(all_lines) + "\n")
    for split, name in SPLIT_FILES.items():
        in_split = {v["video_id"] for v in videos if v["split"] == split}
        split_lines = [line for line in all_lines if line.split("&")[1] in in_split]
        (folder / name).write_text("\n".join(split_lines) + "\n")
    return all_lines


def make_synthetic_ave(
    root: str | os.PathLike,
    *,
    num_videos: int = 60,
    seed: int = 0,
    num_categories: int = 5,
    size: int = 64,
    fps: int = 8,
    overwrite: bool = False,
) -> Path:
    """Writes the synthetic AVE folder at ``root`` (atomically) and returns its path.

    Args:
        root: the folder to create (the ``AVE_Dataset`` equivalent).
        num_videos: number of videos (about 2/3 train, 1/6 val, 1/6 test, at least one each; with 6 or more,
            two train videos carry the release's quirks and one of them adds a second row).
        seed: seed of everything random (ids, categories, segments, positions, noise).
        num_categories: how many AVE categories occur (the first ones of :data:`AVE_CATEGORIES`), 1..28.
        size: frame side in pixels.
        fps: video frame rate.
        overwrite: replace an existing ``root``; without it an existing folder written with the same
            parameters is kept as is (prepared outputs included) and any other existing folder is an error.

    Returns:
        The path of the folder.

    Raises:
        FileExistsError: ``root`` exists, is not this generator's output with the same parameters and
            ``overwrite`` is false.
        ValueError: a parameter out of range.

    One generation loop whose random draws must stay in this exact order (the set is byte-identical for a seed);
    most of its length is this docstring.
    """
    root = Path(root)
    if not 1 <= int(num_categories) <= len(AVE_CATEGORIES):
        raise ValueError(f"num_categories must be in 1..{len(AVE_CATEGORIES)}, got {num_categories}")
    if int(size) < 16 or int(size) % 2:
        raise ValueError(f"size must be an even number of pixels >= 16 (H.264 uses 4:2:0 chroma), got {size}")
    if int(fps) < 1:
        raise ValueError(f"fps must be a positive integer, got {fps}")
    params = {
        "num_videos": int(num_videos),
        "seed": int(seed),
        "num_categories": int(num_categories),
        "size": int(size),
        "fps": int(fps),
        "version": VERSION,
    }
    _split_sizes(params["num_videos"])  # validates before any work
    if keep_existing(root, params, what="AVE", overwrite=overwrite):
        return root
    with staging_folder(root) as tmp:
        rng = np.random.default_rng(seed)
        categories = list(AVE_CATEGORIES[: params["num_categories"]])
        videos = _plan(rng, params["num_videos"], categories)
        (tmp / "AVE").mkdir()
        for video in videos:
            video_rng = np.random.default_rng(video["noise_seed"])
            frames = _render_frames(video, params["size"], params["fps"], video_rng)
            audio = _render_audio(video, video_rng)
            _write_mp4(tmp / "AVE" / f"{video['video_id']}.mp4", frames, audio, params["fps"])
        all_lines = _write_annotations(tmp, videos)
        (tmp / "categories.txt").write_text("\n".join(AVE_CATEGORIES) + "\n")
        (tmp / "ReadMe.txt").write_text(
            "Synthetic AVE (written by scripts/make_synthetic_ave.py) in the layout of the AVE release.\n"
            "AVE/<VideoID>.mp4: 10-s videos; during the annotated seconds [Start, End) a category-specific\n"
            "shape + colour is visible and a category-specific tone sounds.\n"
            "Annotations.txt (with a header line), trainSet.txt, valSet.txt, testSet.txt: one row per line,\n"
            "Category&VideoID&Quality&Start&End (seconds, End exclusive).\n"
            "categories.txt: the 28 AVE categories (class ids 0..27; background is 28).\n"
            "Prepare with: python scripts/prepare_ave.py <this folder>\n"
        )
        manifest = {
            "params": params,
            "categories": {
                c: {"index": AVE_CATEGORIES.index(c), **category_style(AVE_CATEGORIES.index(c))} for c in categories
            },
            "videos": videos,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        publish(tmp, root)
    log.info("wrote synthetic AVE (%d videos, %d rows) to %s", len(videos), len(all_lines), root)
    return root


def build_synthetic_ave(root: str | os.PathLike, **kwargs: Any) -> Path:
    """Generates the synthetic AVE set (:func:`make_synthetic_ave`) and prepares it like the real release
    (:func:`cola.data.ave_prepare.prepare_ave`, one process per CPU up to 8): what ``task=ave`` reads.

    Args:
        root: the folder to create.
        **kwargs: passed to :func:`make_synthetic_ave`.

    Returns:
        The path of the prepared folder.
    """
    from cola.data.ave_prepare import format_report, prepare_ave

    root = make_synthetic_ave(root, **kwargs)
    log.info("%s", format_report(prepare_ave(root, workers=min(8, os.cpu_count() or 1))))
    return root
