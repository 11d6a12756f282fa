"""Writes a small synthetic AVSBench (S4 + MS3) in the official folder layout, for tests and CPU runs.

From Python (what the harness calls when ``data.root`` is null, and the tests):
``make_synthetic_avs(root, num_s4=40, num_ms3=24, seed=0)``. Command line:
``python scripts/make_synthetic_avs.py ROOT [--num-s4 40] [--num-ms3 24] [--num-videos N] [--seed 0]``.

``ROOT`` then holds ``Single-source/`` and ``Multi-sources/`` exactly as the AVSBench release does
(docs/data.md#avsbench), so ``train.py task=avs_s4 data.root=ROOT`` reads it with the same code as the real data.

What makes it learnable: each category has its own shape + colour and its own tone (a fundamental and its
octave). Every frame shows 2-3 objects of different categories on a plain background; the ground-truth mask
is the union of the objects whose tone plays during that second. In S4 one object sounds for the whole clip
(some clips end before 4 s, so the last second is padding); in MS3 each second has its own
set of sounding objects, possibly none (an empty mask). Odd-numbered clips are mono, the others stereo with
different channel gains (the loader has to downmix). Frames and masks are 224 x 224 PNGs with flat colours
(a few hundred bytes each).

The output is deterministic for a given seed and written atomically (into a temporary sibling folder that
is renamed to ``ROOT`` at the end). ``ROOT/synthetic.json`` records the parameters and, per clip, the
objects, their centres per frame and which of them sound, for tests and debugging.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

from cola.data.synthetic.folder import MANIFEST, keep_existing, publish, staging_folder
from cola.data.synthetic.shapes import draw_shape

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
NUM_FRAMES = 5
FRAME_SIZE = 224
SPLITS = ("train", "val", "test")

# name -> (shape, RGB colour, tone in Hz); names are real AVSBench S4 categories (one with a hyphen).
CATEGORIES: dict[str, tuple[str, tuple[int, int, int], float]] = {
    "ambulance_siren": ("circle", (220, 40, 40), 330.0),
    "baby_laughter": ("square", (40, 180, 60), 470.0),
    "dog_barking": ("triangle", (50, 80, 220), 620.0),
    "helicopter": ("diamond", (230, 200, 40), 810.0),
    "horse_clip-clop": ("plus", (200, 60, 200), 1050.0),
    "playing_piano": ("ellipse", (40, 200, 210), 1370.0),
}
CATEGORY_NAMES = tuple(CATEGORIES)

# the 2 x 2 grid of cells an object can occupy (objects never overlap, so masks are exact)
CELL = FRAME_SIZE // 2
RADIUS_RANGE = (30, 44)  # 7-12 % of the frame per object: still visible at low input resolution


def _split_sizes(n: int) -> dict[str, int]:
    """About 60/20/20, at least one clip per split."""
    if n < 3:
        raise ValueError(f"need at least 3 clips per subset (one per split), got {n}")
    n_val = n_test = max(1, round(0.2 * n))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def _layout_objects(rng: np.random.Generator, categories: list[str]) -> list[dict[str, Any]]:
    """Places one object per category in distinct grid cells; each drifts a little from frame to frame."""
    cells = rng.permutation(4)[: len(categories)]
    objects = []
    for cat, cell in zip(categories, cells):
        r = int(rng.integers(RADIUS_RANGE[0], RADIUS_RANGE[1] + 1))
        base = np.array([(cell % 2 + 0.5) * CELL, (cell // 2 + 0.5) * CELL])
        slack = CELL / 2 - r - 2  # keeps the shape inside its cell
        start = rng.uniform(-slack, slack, size=2)
        step = rng.uniform(-slack / 3, slack / 3, size=2)
        centres = []
        for k in range(NUM_FRAMES):
            offset = np.clip(start + k * step, -slack, slack)
            centres.append([int(round(base[0] + offset[0])), int(round(base[1] + offset[1]))])
        objects.append({"category": cat, "radius": r, "centres": centres})
    return objects


def _render(objects: list[dict[str, Any]], sounding: list[bool], k: int, background: tuple[int, int, int]):
    """Frame k (RGB) and its mask (L, 255 = sounding object) as PIL images."""
    frame = Image.new("RGB", (FRAME_SIZE, FRAME_SIZE), background)
    mask = Image.new("L", (FRAME_SIZE, FRAME_SIZE), 0)
    draw_f, draw_m = ImageDraw.Draw(frame), ImageDraw.Draw(mask)
    for obj, is_sounding in zip(objects, sounding):
        shape, colour, _ = CATEGORIES[obj["category"]]
        cx, cy = obj["centres"][k]
        draw_shape(draw_f, shape, cx, cy, obj["radius"], colour)
        if is_sounding:
            draw_shape(draw_m, shape, cx, cy, obj["radius"], 255)
    return frame, mask


def _tone(category: str, num_samples: int, phase: float) -> np.ndarray:
    freq = CATEGORIES[category][2]
    t = np.arange(num_samples) / SAMPLE_RATE
    return np.sin(2 * math.pi * freq * t + phase) + 0.5 * np.sin(2 * math.pi * 2 * freq * t + phase)


def _audio(rng: np.random.Generator, sounding_per_second: list[list[str]], duration: float, stereo: bool) -> np.ndarray:
    """(num_samples,) or (num_samples, 2) float32: per second the sum of the sounding categories' tones."""
    per_second = []
    for cats in sounding_per_second:
        x = 0.01 * rng.standard_normal(SAMPLE_RATE)
        for cat in cats:
            x += 0.25 * _tone(cat, SAMPLE_RATE, float(rng.uniform(0, 2 * math.pi)))
        per_second.append(x)
    wave = np.concatenate(per_second)[: int(round(duration * SAMPLE_RATE))]
    if stereo:
        gains = rng.uniform(0.5, 1.0, size=2)
        wave = np.stack([wave * gains[0], wave * gains[1]], axis=1)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _write_wav(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")


def _save_png(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=False, compress_level=6)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _write_s4(root: Path, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    base = root / "Single-source"
    data = base / "s4_data"
    rows, clips = [], []
    index = 0
    for split, size in _split_sizes(n).items():
        for _ in range(size):
            category = CATEGORY_NAMES[index % len(CATEGORY_NAMES)]
            name = f"s4clip{index:04d}_{index % 7}"
            start = int(rng.integers(0, 60))
            others = [c for c in CATEGORY_NAMES if c != category]
            num_objects = int(rng.integers(2, 4))
            cats = [category, *rng.choice(others, size=num_objects - 1, replace=False).tolist()]
            order = rng.permutation(num_objects)
            cats = [cats[i] for i in order]
            objects = _layout_objects(rng, cats)
            sounding = [c == category for c in cats]
            background = tuple(int(v) for v in rng.integers(40, 120, size=3))
            for k in range(1, NUM_FRAMES + 1):
                frame, mask = _render(objects, sounding, k - 1, background)
                _save_png(frame, data / "visual_frames" / split / category / name / f"{name}_{k}.png")
                if split != "train" or k == 1:  # the release annotates only frame 1 of training clips
                    _save_png(mask, data / "gt_masks" / split / category / name / f"{name}_{k}.png")
            short = index % 5 == 2  # some clips end early: the loader pads the missing second(s)
            duration = float(rng.uniform(3.3, 3.9)) if short else float(NUM_FRAMES)
            wave = _audio(rng, [[category]] * NUM_FRAMES, duration, stereo=index % 2 == 0)
            _write_wav(data / "audio_wav" / split / category / f"{name}.wav", wave)
            rows.append([name, start, category, split])
            clips.append(
                {
                    "subset": "s4",
                    "video_id": name,
                    "split": split,
                    "category": category,
                    "duration": duration,
                    "stereo": index % 2 == 0,
                    "objects": objects,
                    "sounding": [[obj["category"] == category for obj in objects]] * NUM_FRAMES,
                }
            )
            index += 1
    _write_csv(base / "s4_meta_data.csv", ["name", "start_time", "category", "split"], rows)
    return clips


def _write_ms3(root: Path, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    base = root / "Multi-sources"
    data = base / "ms3_data"
    rows, clips = [], []
    index = 0
    for split, size in _split_sizes(n).items():
        for j in range(size):
            vid = f"ms3clip{index:04d}"
            num_objects = int(rng.integers(2, 4))
            cats = rng.choice(CATEGORY_NAMES, size=num_objects, replace=False).tolist()
            objects = _layout_objects(rng, cats)
            background = tuple(int(v) for v in rng.integers(40, 120, size=3))
            sounding_flags = []
            for k in range(NUM_FRAMES):
                u = rng.uniform()
                count = 0 if u < 0.15 else (1 if u < 0.7 else 2)
                if j == 0 and k == NUM_FRAMES - 1:
                    count = 0  # every split gets at least one empty mask
                chosen = set(rng.choice(num_objects, size=count, replace=False).tolist())
                sounding_flags.append([i in chosen for i in range(num_objects)])
            for k in range(1, NUM_FRAMES + 1):
                frame, mask = _render(objects, sounding_flags[k - 1], k - 1, background)
                _save_png(frame, data / "visual_frames" / vid / f"{vid}.mp4_{k}.png")
                _save_png(mask, data / "gt_masks" / split / vid / f"{vid}_{k}.png")
            per_second = [[o["category"] for o, s in zip(objects, flags) if s] for flags in sounding_flags]
            wave = _audio(rng, per_second, float(NUM_FRAMES), stereo=index % 2 == 0)
            _write_wav(data / "audio_wav" / split / f"{vid}.wav", wave)
            rows.append([vid, split])
            clips.append(
                {
                    "subset": "ms3",
                    "video_id": vid,
                    "split": split,
                    "category": None,
                    "duration": float(NUM_FRAMES),
                    "stereo": index % 2 == 0,
                    "objects": objects,
                    "sounding": sounding_flags,
                }
            )
            index += 1
    _write_csv(base / "ms3_meta_data.csv", ["video_id", "split"], rows)
    return clips


def make_synthetic_avs(
    root: str | os.PathLike, *, num_s4: int = 40, num_ms3: int = 24, seed: int = 0, overwrite: bool = False
) -> Path:
    """Writes the synthetic AVSBench folder at ``root`` (atomically) and returns its path.

    Args:
        root: the folder to create; it will hold ``Single-source/`` and ``Multi-sources/``.
        num_s4: number of S4 clips (split about 60/20/20 into train/val/test, at least one each).
        num_ms3: number of MS3 clips (same split rule).
        seed: seed of everything random (layout, colours of the background, audio noise).
        overwrite: replace an existing ``root``; without it an existing folder written with the same
            parameters is kept as is and any other existing folder is an error.

    Returns:
        The path of the folder.

    Raises:
        FileExistsError: ``root`` exists, is not this generator's output with the same parameters and
            ``overwrite`` is false.
        ValueError: fewer than 3 clips requested for a subset.
    """
    root = Path(root)
    params = {"num_s4": int(num_s4), "num_ms3": int(num_ms3), "seed": int(seed), "version": 1}
    _split_sizes(params["num_s4"]), _split_sizes(params["num_ms3"])  # validates before any work
    if keep_existing(root, params, what="AVSBench", overwrite=overwrite):
        return root
    with staging_folder(root) as tmp:
        rng = np.random.default_rng(seed)
        clips = _write_s4(tmp, params["num_s4"], rng) + _write_ms3(tmp, params["num_ms3"], rng)
        manifest = {
            "params": params,
            "categories": {k: {"shape": v[0], "colour": v[1], "tone_hz": v[2]} for k, v in CATEGORIES.items()},
            "clips": clips,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        publish(tmp, root)
    log.info("wrote synthetic AVSBench (%d S4 + %d MS3 clips) to %s", num_s4, num_ms3, root)
    return root
