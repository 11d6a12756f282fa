"""Writes a small synthetic MUSIC-AVQA in the release layout (real mp4 videos with audio), for tests and CPU runs.

From Python: ``make_synthetic_avqa(root, num_videos=170, seed=0)``; the harness calls :func:`build_synthetic_avqa`
(generate, then prepare like the real release). Command line: ``python scripts/make_synthetic_avqa.py ROOT``.

``ROOT`` then looks like the release (docs/data.md#music-avqa): ``avqa-train.json``, ``avqa-val.json``,
``avqa-test.json`` with the release's fields (``video_id``, ``question_id``, string-encoded ``type`` and
``templ_values``, ``question_content`` with ``<...>`` placeholders, ``question_deleted``, ``anser``) and the
videos (``seconds``-long H.264, 64 x 64 at 8 fps, stereo 44.1 kHz AAC) split over the release's two folders as the
release splits them: 8-digit numeric ids (``00012345.mp4``) in ``MUSIC-AVQA-videos-Real/`` and ``sa``-prefixed ids
(``sa00012345.mp4``) in ``MUCIS-AVQA-videos-Synthetic/`` (sic, the release's misspelt name): every fourth video in
id order, from the second (:func:`video_folder`), so a root of three or more videos has both folders. The folder
only decides the file's place and id; every video is generated the same way.

What makes it answerable: a scene holds one to three of four instruments (:data:`INSTRUMENTS`, answer words of
the release, ``acoustic_guitar`` included), each a coloured shape in one of three slots (left, middle, right)
for the whole video, on an ``indoor`` (warm, dark) or ``outdoor`` (sky blue) background. Each visible instrument
sounds its own pure tone (or stays silent) from an onset second to the end at one of four loudness levels; an
off-screen instrument may sound too. Every video gets ``questions_per_video`` questions of different types,
drawn from real release templates whose answers follow from the scene:

| type | template(s) | needs |
|---|---|---|
| Audio Counting | How many musical instruments were heard throughout the video? / Is there a <Object> sound? | audio (+ question) |
| Audio Comparative | Is the <Object> louder than the <Object>? | audio + question |
| Visual Counting | Is there a <Object> in the entire video? / How many types of musical instruments appeared ...? | frames |
| Visual Location | What kind of instrument is the <LRer> instrument? / Where is the performance? | frames |
| AV Existential | Is this sound from the instrument in the video? | both (an off-screen tone) |
| AV Counting | How many instruments in the video did not sound from beginning to end? | both |
| AV Location | Where is the <LL> instrument? (loudest) | both |
| AV Comparative | Is the instrument on the <LR> louder than the instrument on the <LR>? | both + question |
| AV Temporal | Where is the <FL> sounding instrument? (first, last) | both, in time |

Answers are balanced within each template where the scene allows (yes/no close to half each), so the
per-type majority floor is low and beating it needs the audio, the frames and the question. The output is
deterministic for a seed and written atomically; ``ROOT/synthetic.json`` records the parameters, every scene
and every question (with each video's ``folder``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cola.data.avqa import REAL_VIDEO_DIR, SYNTHETIC_VIDEO_DIR
from cola.data.avqa_annotations import SPLIT_FILES
from cola.data.synthetic.ave import _write_mp4  # the AVE set's H.264 + AAC muxer (any whole number of seconds)
from cola.data.synthetic.folder import MANIFEST, keep_existing, publish, staging_folder
from cola.data.synthetic.shapes import draw_shape

log = logging.getLogger(__name__)

AUDIO_RATE = 44100
INSTRUMENTS: dict[str, dict[str, Any]] = {  # answer words of the release; one shape, colour and pure tone each
    "violin": {"shape": "circle", "colour": (230, 40, 40), "tone_hz": 880.0},
    "piano": {"shape": "square", "colour": (40, 90, 235), "tone_hz": 262.0},
    "flute": {"shape": "triangle", "colour": (40, 200, 60), "tone_hz": 1760.0},
    "acoustic_guitar": {"shape": "diamond", "colour": (245, 210, 30), "tone_hz": 494.0},
}
SLOTS = {"left": 1 / 6, "middle": 1 / 2, "right": 5 / 6}  # horizontal centres
LEVELS = (0.04, 0.09, 0.18, 0.35)  # tone amplitudes, distinct per sounding instrument of a video
BACKGROUNDS = {"indoor": (95, 60, 40), "outdoor": (120, 170, 215)}
COUNTS = ("zero", "one", "two", "three", "four")
SYNTHETIC_PREFIX = "sa"  # the release's synthetic videos have prefixed ids (sa00007434); its real ones are numeric
VERSION = 2  # 2: videos split over MUSIC-AVQA-videos-Real/ and MUCIS-AVQA-videos-Synthetic/ (1: all in the first)


def video_folder(k: int, number: int) -> tuple[str, str]:
    """The folder and id of the video with the k-th smallest drawn ``number``: every fourth one from the second
    (k % 4 == 1) is a synthetic video of the release (``sa`` + 8 digits, in its misspelt synthetic folder), the
    others real ones (8 digits)."""
    if k % 4 == 1:
        return SYNTHETIC_VIDEO_DIR, f"{SYNTHETIC_PREFIX}{number:08d}"
    return REAL_VIDEO_DIR, f"{number:08d}"


# ------------------------------------------------------------------------------------------------- scenes
def _scene(rng: np.random.Generator, seconds: int) -> dict[str, Any]:
    """One video: visible instruments (slot, sounding, level, onset), an optional off-screen one, a background."""
    names = [str(n) for n in rng.permutation(list(INSTRUMENTS))]
    n_visible = int(rng.choice([1, 2, 3], p=[0.2, 0.4, 0.4]))
    slots = [str(s) for s in rng.permutation(list(SLOTS))[:n_visible]]
    objects = [
        {"instrument": names[i], "slot": slots[i], "sounding": bool(rng.random() < 0.6)} for i in range(n_visible)
    ]
    if rng.random() < 0.5:  # an instrument heard but not seen
        objects.append({"instrument": names[n_visible], "slot": None, "sounding": True})
    if not any(o["sounding"] for o in objects):
        objects[int(rng.integers(n_visible))]["sounding"] = True
    sounding = [o for o in objects if o["sounding"]]
    levels = rng.permutation(LEVELS)
    onsets = rng.permutation(max(seconds, len(sounding)))[: len(sounding)] % seconds  # distinct while seconds allow
    for o, level, onset in zip(sounding, levels, onsets, strict=False):
        o.update(level=float(level), onset=int(onset), phase=float(rng.uniform(0, 2 * np.pi)))
    return {"objects": objects, "background": str(rng.choice(list(BACKGROUNDS))), "seconds": seconds}


def _render_frames(scene: dict[str, Any], size: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """(seconds * fps, size, size, 3) uint8: the background with grain and the visible instruments (static)."""
    base = np.asarray(BACKGROUNDS[scene["background"]], dtype=np.float32)  # (3,)
    grain = rng.normal(0.0, 6.0, size=(size, size, 1)).astype(np.float32)
    img = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        if o["slot"] is not None:
            style = INSTRUMENTS[o["instrument"]]
            draw_shape(draw, style["shape"], SLOTS[o["slot"]] * size, 0.5 * size, 0.13 * size, style["colour"])
    return np.repeat(np.asarray(img)[None], scene["seconds"] * fps, axis=0)


def _render_audio(scene: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """(2, seconds * 44100) float32 stereo: low noise, each sounding instrument's tone from its onset on."""
    n = scene["seconds"] * AUDIO_RATE
    t = np.arange(n, dtype=np.float64) / AUDIO_RATE
    mono = rng.normal(0.0, 0.01, size=n)
    fade = int(0.01 * AUDIO_RATE)
    for o in scene["objects"]:
        if o["sounding"]:
            env = np.zeros(n)
            a = o["onset"] * AUDIO_RATE
            env[a:] = 1.0
            env[a : a + fade] = np.linspace(0.0, 1.0, fade)
            mono += o["level"] * env * np.sin(2 * np.pi * INSTRUMENTS[o["instrument"]]["tone_hz"] * t + o["phase"])
    return np.clip(np.stack([mono, mono]), -1.0, 1.0).astype(np.float32)  # (2, N)


# ---------------------------------------------------------------------------------------------- questions
Question = tuple[str, str, str, list[str], str]  # modality, type, template, values, answer


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _pick_object(rng: np.random.Generator, present: set[str]) -> tuple[str, bool]:
    """An instrument that is in ``present`` or not, half each when both exist."""
    absent = [n for n in INSTRUMENTS if n not in present]
    pool = sorted(present) if present and (not absent or rng.random() < 0.5) else absent
    name = str(rng.choice(pool))
    return name, name in present


def _audio_counting(s, rng) -> Question | None:
    heard = {o["instrument"] for o in s["objects"] if o["sounding"]}
    if rng.random() < 0.5:
        return (
            "Audio",
            "Counting",
            "How many musical instruments were heard throughout the video?",
            [],
            COUNTS[len(heard)],
        )
    name, there = _pick_object(rng, heard)
    return "Audio", "Counting", "Is there a <Object> sound?", [name], _yes(there)


def _audio_comparative(s, rng) -> Question | None:
    heard = [o for o in s["objects"] if o["sounding"]]
    if len(heard) < 2:
        return None
    a, b = (heard[i] for i in rng.permutation(len(heard))[:2])
    values = [a["instrument"], b["instrument"]]
    return "Audio", "Comparative", "Is the <Object> louder than the <Object>?", values, _yes(a["level"] > b["level"])


def _visual_counting(s, rng) -> Question | None:
    seen = {o["instrument"] for o in s["objects"] if o["slot"] is not None}
    if rng.random() < 0.5:
        template = "How many types of musical instruments appeared in the entire video?"
        return "Visual", "Counting", template, [], COUNTS[len(seen)]
    name, there = _pick_object(rng, seen)
    return "Visual", "Counting", "Is there a <Object> in the entire video?", [name], _yes(there)


def _visual_location(s, rng) -> Question | None:
    seen = sorted((SLOTS[o["slot"]], o["instrument"]) for o in s["objects"] if o["slot"] is not None)
    if len(seen) < 2 or rng.random() < 0.5:
        return "Visual", "Location", "Where is the performance?", [], s["background"]
    side = str(rng.choice(["leftest", "rightest"]))
    answer = seen[0][1] if side == "leftest" else seen[-1][1]
    return "Visual", "Location", "What kind of instrument is the <LRer> instrument?", [side], answer


def _av_existential(s, rng) -> Question | None:
    offscreen = any(o["slot"] is None for o in s["objects"])
    return "Audio-Visual", "Existential", "Is this sound from the instrument in the video?", [], _yes(not offscreen)


def _av_counting(s, rng) -> Question | None:
    silent = sum(o["slot"] is not None and not o["sounding"] for o in s["objects"])
    template = "How many instruments in the video did not sound from beginning to end?"
    return "Audio-Visual", "Counting", template, [], COUNTS[silent]


def _playing(s) -> list[dict[str, Any]]:
    return [o for o in s["objects"] if o["slot"] is not None and o["sounding"]]


def _av_location(s, rng) -> Question | None:
    playing = _playing(s)
    if not playing:
        return None
    loudest = max(playing, key=lambda o: o["level"])
    return "Audio-Visual", "Location", "Where is the <LL> instrument?", ["loudest"], loudest["slot"]


def _av_comparative(s, rng) -> Question | None:
    playing = _playing(s)
    if len(playing) < 2:
        return None
    a, b = (playing[i] for i in rng.permutation(len(playing))[:2])
    template = "Is the instrument on the <LR> louder than the instrument on the <LR>?"
    return "Audio-Visual", "Comparative", template, [a["slot"], b["slot"]], _yes(a["level"] > b["level"])


def _av_temporal(s, rng) -> Question | None:
    playing = sorted(_playing(s), key=lambda o: o["onset"])
    if len(playing) < 2 or playing[0]["onset"] == playing[-1]["onset"]:
        return None
    which = str(rng.choice(["first", "last"]))
    order = [o["onset"] for o in playing]
    if order.count(order[0] if which == "first" else order[-1]) > 1:  # a tie: no single answer
        return None
    answer = playing[0]["slot"] if which == "first" else playing[-1]["slot"]
    return "Audio-Visual", "Temporal", "Where is the <FL> sounding instrument?", [which], answer


GENERATORS: tuple[Callable[[dict, np.random.Generator], Question | None], ...] = (
    _audio_counting,
    _audio_comparative,
    _visual_counting,
    _visual_location,
    _av_existential,
    _av_counting,
    _av_location,
    _av_comparative,
    _av_temporal,
)
RARE = (1, 7, 8)  # comparative and temporal questions need two sounding instruments (seen, for the AV ones)


def _questions(scene: dict[str, Any], rng: np.random.Generator, count: int) -> list[Question]:
    """Up to ``count`` questions of distinct types that the scene can answer: the types few scenes can answer
    (:data:`RARE`) first, then the others, each group in random order."""
    out: list[Question] = []
    rare, common = (
        [i for i in range(len(GENERATORS)) if i in RARE],
        [i for i in range(len(GENERATORS)) if i not in RARE],
    )
    for i in [*rng.permutation(rare), *rng.permutation(common)]:
        q = GENERATORS[i](scene, rng)
        if q is not None:
            out.append(q)
        if len(out) == count:
            break
    return out


def _entry(video_id: str, question_id: int, q: Question) -> dict[str, Any]:
    """One release entry (field order and string encodings as in ``avqa-*.json``)."""
    modality, qtype, template, values, answer = q
    return {
        "video_id": video_id,
        "question_id": question_id,
        "type": json.dumps([modality, qtype]),
        "question_content": template,
        "templ_values": json.dumps(values),
        "question_deleted": 0,
        "anser": answer,
    }


# ---------------------------------------------------------------------------------------------- generator
def _split_sizes(n: int) -> dict[str, int]:
    """About 60 % train, 20 % val, 20 % test videos, at least one per split."""
    if n < 3:
        raise ValueError(f"num_videos must be at least 3 (one video per split), got {n}")
    n_eval = max(1, round(0.2 * n))
    return {"train": n - 2 * n_eval, "val": n_eval, "test": n_eval}


def make_synthetic_avqa(
    root: str | os.PathLike,
    *,
    num_videos: int = 170,
    questions_per_video: int = 4,
    seconds: int = 2,
    seed: int = 0,
    size: int = 64,
    fps: int = 8,
    overwrite: bool = False,
) -> Path:
    """Writes the synthetic MUSIC-AVQA folder at ``root`` (atomically) and returns its path.

    Args:
        root: the folder to create.
        num_videos: number of videos (about 60 / 20 / 20 % train / val / test, at least one each).
        questions_per_video: questions per video, each of a different type (fewer where a scene allows fewer).
        seconds: video length (the data module then samples every second: one segment per second).
        seed: seed of everything random (scenes, questions, ids, noise).
        size: frame side in pixels (even).
        fps: video frame rate.
        overwrite: replace an existing ``root``; without it an existing folder written with the same parameters is
            kept as is (prepared outputs included) and any other existing folder is an error.

    Raises:
        FileExistsError: ``root`` exists, is not this generator's output with these parameters and ``overwrite``
            is false.
        ValueError: a parameter out of range.
    """
    root = Path(root)
    checks = {"questions_per_video": (questions_per_video, 1, 9), "seconds": (seconds, 2, 60), "fps": (fps, 1, 60)}
    for name, (value, lo, hi) in checks.items():
        if not lo <= int(value) <= hi:
            raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    if int(size) < 16 or int(size) % 2:
        raise ValueError(f"size must be an even number of pixels >= 16 (H.264 uses 4:2:0 chroma), got {size}")
    params = {
        "num_videos": int(num_videos),
        "questions_per_video": int(questions_per_video),
        "seconds": int(seconds),
        "seed": int(seed),
        "size": int(size),
        "fps": int(fps),
        "version": VERSION,
    }
    sizes = _split_sizes(params["num_videos"])  # validates before any work
    if keep_existing(root, params, what="MUSIC-AVQA", overwrite=overwrite):
        return root
    with staging_folder(root) as tmp:
        rng = np.random.default_rng(seed)
        numbers = sorted(rng.choice(10**5, size=params["num_videos"], replace=False).tolist())
        places = [video_folder(k, number) for k, number in enumerate(numbers)]  # (folder, video id)
        ids = [video_id for _, video_id in places]
        order = rng.permutation(len(ids)).tolist()
        splits = [s for s in ("train", "val", "test") for _ in range(sizes[s])]
        for folder in (REAL_VIDEO_DIR, SYNTHETIC_VIDEO_DIR):
            (tmp / folder).mkdir()
        videos, entries = [], {s: [] for s in SPLIT_FILES}
        for j, split in zip(order, splits, strict=True):
            folder = places[j][0]
            scene = _scene(rng, params["seconds"])
            questions = _questions(scene, rng, params["questions_per_video"])
            noise = np.random.default_rng(int(rng.integers(2**31)))
            frames = _render_frames(scene, params["size"], params["fps"], noise)
            _write_mp4(tmp / folder / f"{ids[j]}.mp4", frames, _render_audio(scene, noise), params["fps"])
            videos.append({"video_id": ids[j], "folder": folder, "split": split, **scene})
            entries[split] += [(ids[j], q) for q in questions]
        question_id = 0
        for split, name in SPLIT_FILES.items():  # the release lists questions in no particular order
            rows = []
            for k in rng.permutation(len(entries[split])).tolist():
                rows.append(_entry(entries[split][k][0], question_id, entries[split][k][1]))
                question_id += 1
            (tmp / name).write_text(json.dumps(rows, indent=4) + "\n")
        (tmp / MANIFEST).write_text(json.dumps({"params": params, "instruments": INSTRUMENTS, "videos": videos}))
        publish(tmp, root)
    log.info("wrote synthetic MUSIC-AVQA (%d videos, %d questions) to %s", len(ids), question_id, root)
    return root


def build_synthetic_avqa(root: str | os.PathLike, **kwargs: Any) -> Path:
    """Generates the synthetic set (:func:`make_synthetic_avqa`) and prepares it like the real release
    (:func:`cola.data.avqa_prepare.prepare_avqa` over its ``seconds``, one process per CPU up to 8): what
    ``task=avqa`` reads.

    Args:
        root: the folder to create.
        **kwargs: passed to :func:`make_synthetic_avqa`.

    Returns:
        The path of the prepared folder.
    """
    from cola.data.ave_prepare import format_report
    from cola.data.avqa_prepare import folder_summary, prepare_avqa

    root = make_synthetic_avqa(root, **kwargs)
    seconds = json.loads((root / MANIFEST).read_text())["params"]["seconds"]
    report = prepare_avqa(root, seconds=seconds, workers=min(8, os.cpu_count() or 1), progress=False)
    log.info("%s", format_report(report))
    log.info("%s", folder_summary(report))
    return root
