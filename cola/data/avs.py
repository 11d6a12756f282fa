"""AVSBench (S4 single-source, MS3 multi-source) audio-visual segmentation data, read from the release layout.

One sample is one 5-second clip: frames k = 1..5 (224 x 224 RGB), each paired with one audio window (by
default audio second k; the official input is a 1.95-s window per frame, the 5 windows spread over the clip:
``audio_clip_seconds=1.95`` with ``audio_input='pad'``, see :mod:`cola.data.audio`), and a binary mask of the sounding object(s) per frame. The release annotates only frame 1 of S4 training clips;
``mask_valid`` tells the task which frames have ground truth so losses use annotated frames only.

Layout under ``root`` (docs/data.md#avsbench)::

    Single-source/s4_meta_data.csv                                 name, start time, category, split
    Single-source/s4_data/visual_frames/<split>/<category>/<name>/<name>_<k>.png
    Single-source/s4_data/audio_wav/<split>/<category>/<name>.wav
    Single-source/s4_data/gt_masks/<split>/<category>/<name>/<name>_<k>.png   (train: k = 1 only)
    Multi-sources/ms3_meta_data.csv                                video_id, split
    Multi-sources/ms3_data/visual_frames/<id>/<id>.mp4_<k>.png
    Multi-sources/ms3_data/audio_wav/<split>/<id>.wav
    Multi-sources/ms3_data/gt_masks/<split>/<id>/<id>_<k>.png

Batches (dict): ``pixel_values (B, 5, 3, S, S)`` normalised, ``input_values (B, 5, T, 128)`` normalised
Kaldi fbank per frame (``T`` = 1024 with ``audio_input='pad'``, else ``audio_target_frames``), ``masks (B, 5, S, S)`` float 0/1, ``mask_valid (B, 5)`` bool, ``video_id`` list.

Robustness: :meth:`AVSDataModule.validate` checks the layout and the csv before any long work; clips listed
in the csv whose files are missing are dropped with one warning; a file that exists but cannot be decoded
is skipped at load time with a warning and counted (the collate function drops the sample), so a corrupt
file never stops an epoch.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cola.data.audio import (
    audio_clip_features,
    check_audio_input,
    check_audio_setting,
    load_audio,
    resolve_windows,
)
from cola.data.splits import SplitDataModule

log = logging.getLogger(__name__)

SUBSETS = ("s4", "ms3")
SPLITS = ("train", "val", "test")
SELECT_ON = ("val", "test")
NUM_FRAMES = 5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the csv columns we read, by header name (S4 also has a start-time column, unused)
META_COLUMNS = {"s4": ("name", "category", "split"), "ms3": ("video_id", "split")}
MAX_LISTED = 5  # how many missing clips a warning names
FLOOR_CLIPS_PER_UPDATE = 16  # clips scored at once by floor_metrics (bounds its memory)


@dataclass(frozen=True)
class AVSClip:
    """One clip of the index: where its files are.

    Attributes:
        video_id: the clip name (S4 ``name``, MS3 ``video_id``).
        split: ``train`` | ``val`` | ``test``.
        category: the S4 category (``None`` for MS3).
        frames: the 5 frame paths, k = 1..5.
        wav: the audio path.
        masks: the 5 mask paths, ``None`` where the release has no ground truth (S4 train, k > 1).
    """

    video_id: str
    split: str
    category: str | None
    frames: tuple[Path, ...]
    wav: Path
    masks: tuple[Path | None, ...]


def subset_paths(root: str | Path, subset: str) -> dict[str, Path]:
    """The csv and the three data folders of a subset under ``root``."""
    root = Path(root)
    if subset == "s4":
        base, data, csv_name = root / "Single-source", root / "Single-source" / "s4_data", "s4_meta_data.csv"
    elif subset == "ms3":
        base, data, csv_name = root / "Multi-sources", root / "Multi-sources" / "ms3_data", "ms3_meta_data.csv"
    else:
        raise ValueError(f"subset must be one of {list(SUBSETS)}, got {subset!r}")
    return {
        "meta": base / csv_name,
        "visual_frames": data / "visual_frames",
        "audio_wav": data / "audio_wav",
        "gt_masks": data / "gt_masks",
    }


def clip_paths(root: str | Path, subset: str, video_id: str, split: str, category: str | None) -> AVSClip:
    """The file paths of one clip in the release layout (whether or not they exist)."""
    p = subset_paths(root, subset)
    ks = range(1, NUM_FRAMES + 1)
    if subset == "s4":
        if category is None:
            raise ValueError(f"S4 clip {video_id!r} needs a category")
        frames = tuple(p["visual_frames"] / split / category / video_id / f"{video_id}_{k}.png" for k in ks)
        wav = p["audio_wav"] / split / category / f"{video_id}.wav"
        mask_dir = p["gt_masks"] / split / category / video_id
        annotated = {1} if split == "train" else set(ks)  # the release annotates frame 1 of training clips
    else:
        frames = tuple(p["visual_frames"] / video_id / f"{video_id}.mp4_{k}.png" for k in ks)
        wav = p["audio_wav"] / split / f"{video_id}.wav"
        mask_dir = p["gt_masks"] / split / video_id
        annotated = set(ks)
    masks = tuple(mask_dir / f"{video_id}_{k}.png" if k in annotated else None for k in ks)
    return AVSClip(video_id, split, category, frames, wav, masks)


def read_meta_csv(path: Path, subset: str) -> list[dict[str, str]]:
    """Rows of the subset's meta csv as dicts of the columns we use.

    Raises:
        ValueError: the file is empty or lacks a required column (naming the file, the missing columns and
            the expected ones).
    """
    required = META_COLUMNS[subset]
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty; expected a header with columns {list(required)}")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {missing}; expected a header with {list(required)} "
                f"(AVSBench {subset} meta csv), found {header}"
            )
        idx = {c: header.index(c) for c in required}
        rows = []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) <= max(idx.values()):
                raise ValueError(f"{path}, line {line_no}: expected at least {len(header)} columns, got {row}")
            rows.append({c: row[i].strip() for c, i in idx.items()})
    return rows


def _missing_files(clip: AVSClip) -> list[Path]:
    needed = [*clip.frames, clip.wav, *(m for m in clip.masks if m is not None)]
    return [p for p in needed if not p.is_file()]


def index_clips(root: str | Path, subset: str) -> tuple[dict[str, list[AVSClip]], list[tuple[AVSClip, Path]]]:
    """Reads the meta csv and keeps the clips whose files all exist.

    Returns:
        ``({split: [clips]}, [(dropped clip, first missing path)])``; rows with a split other than
        train/val/test are ignored with a warning.
    """
    meta = subset_paths(root, subset)["meta"]
    rows = read_meta_csv(meta, subset)
    id_key = "name" if subset == "s4" else "video_id"
    clips: dict[str, list[AVSClip]] = {s: [] for s in SPLITS}
    dropped: list[tuple[AVSClip, Path]] = []
    other_splits: dict[str, int] = {}
    for row in rows:
        split = row["split"]
        if split not in clips:
            other_splits[split] = other_splits.get(split, 0) + 1
            continue
        clip = clip_paths(root, subset, row[id_key], split, row.get("category"))
        missing = _missing_files(clip)
        if missing:
            dropped.append((clip, missing[0]))
        else:
            clips[split].append(clip)
    if other_splits:
        log.warning("%s: ignored rows whose split is not one of %s: %s", meta, list(SPLITS), other_splits)
    return clips, dropped


# ------------------------------------------------------------------------------------------------ loading
def _load_frame(path: Path, size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB, resized bilinearly when needed."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _load_mask(path: Path, size: int) -> np.ndarray:
    """(S, S) bool; any non-zero pixel is foreground; resized with nearest neighbour."""
    with Image.open(path) as img:
        if img.mode == "P":  # palette indices say nothing about colour; compare the colours
            img = img.convert("RGB")
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].any(axis=-1)  # ignore an alpha channel
    fg = Image.fromarray((arr != 0).astype(np.uint8) * 255)
    if fg.size != (size, size):
        fg = fg.resize((size, size), Image.NEAREST)
    return np.asarray(fg) > 0


class AVSDataset(Dataset):
    """The clips of one split; ``__getitem__`` returns a sample dict or ``None`` for an unreadable clip.

    Args:
        clips: the clips (from :func:`index_clips`).
        image_size: side S of the square frames and masks.
        mean: per-channel image mean (0-1 scale).
        std: per-channel image std.
        audio_target_frames: fbank frames T per clip with ``interpolate``.
        audio_mean: fbank normalisation mean.
        audio_std: fbank normalisation std.
        augment: random horizontal flip of all frames and masks of a clip together.
        name: a label for log messages (e.g. ``s4/train``).
        audio_input: ``interpolate`` or ``pad`` (1024 frames; :func:`cola.data.audio.audio_clip_features`).
        audio_clip_seconds: length of each frame's audio window.
        audio_windows: window placement ``seconds`` | ``official`` | ``None`` (follows ``audio_input``).
    """

    def __init__(
        self,
        clips: Sequence[AVSClip],
        *,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        audio_target_frames: int = 100,
        audio_mean: float = -4.27,
        audio_std: float = 4.57,
        augment: bool = False,
        name: str = "avs",
        audio_input: str = "interpolate",
        audio_clip_seconds: float = 1.0,
        audio_windows: str | None = None,
    ) -> None:
        self.clips = list(clips)
        self.image_size = int(image_size)
        self.mean = np.asarray(mean, dtype=np.float32)  # (3,), broadcast over (..., 3) pixels
        self.std = np.asarray(std, dtype=np.float32)
        self.audio_target_frames = audio_target_frames
        self.audio_mean, self.audio_std = audio_mean, audio_std
        self.audio_input = check_audio_input(audio_input)
        self.audio_clip_seconds = float(audio_clip_seconds)
        self.audio_windows = resolve_windows(audio_windows, audio_input)
        self.augment = augment
        self.name = name
        # clips skipped at load time (video_id -> reason); with num_workers > 0 each worker holds its own copy
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def load(self, index: int) -> dict[str, Any]:
        """Loads clip ``index``; raises on unreadable files (``__getitem__`` catches and skips)."""
        clip = self.clips[index]
        s = self.image_size
        # the per-pixel work runs in numpy: many tiny torch ops are slow when intra-op threads contend for cores
        frames = np.stack([_load_frame(p, s) for p in clip.frames]).astype(np.float32) / 255.0  # (5, S, S, 3)
        frames = (frames - self.mean) / self.std
        masks_np = np.zeros((NUM_FRAMES, s, s), dtype=np.float32)  # (5, S, S)
        valid_np = np.zeros(NUM_FRAMES, dtype=bool)  # (5,)
        for k, path in enumerate(clip.masks):
            if path is not None:
                masks_np[k] = _load_mask(path, s)
                valid_np[k] = True
        if self.augment and torch.rand(()) < 0.5:  # torch's RNG: seeded per worker by Lightning
            frames, masks_np = frames[:, :, ::-1], masks_np[:, :, ::-1]
        pixel_values = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))  # (5, 3, S, S)
        masks = torch.from_numpy(np.ascontiguousarray(masks_np))
        mask_valid = torch.from_numpy(valid_np)
        waveform = load_audio(clip.wav)  # (num_samples,) 16 kHz mono
        input_values = audio_clip_features(
            waveform,
            seconds=NUM_FRAMES,
            target_frames=self.audio_target_frames,
            mean=self.audio_mean,
            std=self.audio_std,
            audio_input=self.audio_input,
            clip_seconds=self.audio_clip_seconds,
            windows=self.audio_windows,
        )  # (5, T, 128)
        return {
            "pixel_values": pixel_values,
            "input_values": input_values,
            "masks": masks,
            "mask_valid": mask_valid,
            "video_id": clip.video_id,
        }

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self.load(index)
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # PIL decode errors; AudioReadError is a ValueError
            clip = self.clips[index]
            self.skipped[clip.video_id] = f"{type(err).__name__}: {err}"
            log.warning(
                "%s: skipping clip %r, a file could not be read (%s: %s); %d clip(s) skipped so far",
                self.name,
                clip.video_id,
                type(err).__name__,
                err,
                len(self.skipped),
            )
            return None


def collate_avs(samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stacks samples, dropping the ``None`` of unreadable clips; ``None`` when nothing is left."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    batch: dict[str, Any] = {
        key: torch.stack([s[key] for s in samples]) for key in ("pixel_values", "input_values", "masks", "mask_valid")
    }
    batch["video_id"] = [s["video_id"] for s in samples]
    return batch


class AVSDataModule(SplitDataModule):
    """AVSBench S4 or MS3 from the release layout under ``root`` (see the module docstring).

    Args:
        root: the folder holding ``Single-source/`` and ``Multi-sources/``.
        subset: ``s4`` or ``ms3``.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        image_size: side S of the frames and masks fed to the model.
        mean: image normalisation mean (default ImageNet).
        std: image normalisation std.
        audio_target_frames: fbank frames per clip with ``audio_input='interpolate'`` (then the AST
            ``max_length``); at least the clip's frames (98 for 1 s, 193 for 1.95 s).
        audio_mean: fbank normalisation mean.
        audio_std: fbank normalisation std.
        select_on: split the validation loader runs on: ``val`` (default) or ``test`` (what the official code
            selects checkpoints on).
        limit_per_split: keep only the first N clips of each split (quick runs).
        augment: random horizontal flips of training clips.
        audio_input: ``interpolate`` (default: each window's fbank padded to ``audio_target_frames``, the AST's
            positional grid interpolated to it) or ``pad`` (official: normalised fbank zero-padded to 1024
            frames, the pretrained grid untouched); see :mod:`cola.data.audio`.
        audio_clip_seconds: length of each frame's audio window (default 1.0; official 1.95).
        audio_windows: window placement: ``seconds`` (window k at second k - 1), ``official`` (starts
            ``linspace(0, N - sr (audio_clip_seconds + 0.1), 5)``, as the official loader) or ``None`` (official
            with pad, seconds with interpolate).

    Attributes:
        audio_frames: fbank frames T per window of the batches (the AST ``max_length`` these need).
        val_split: the split name of the validation loader (``select_on``).
        test_splits: ``["test"]``.
    """

    collate_fn = staticmethod(collate_avs)

    def __init__(
        self,
        *,
        root: str | Path,
        subset: str = "s4",
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        audio_target_frames: int = 100,
        audio_mean: float = -4.27,
        audio_std: float = 4.57,
        select_on: str = "val",
        limit_per_split: int | None = None,
        augment: bool = False,
        audio_input: str = "interpolate",
        audio_clip_seconds: float = 1.0,
        audio_windows: str | None = None,
    ) -> None:
        super().__init__()
        check_audio_input(audio_input)
        self.audio_windows = resolve_windows(audio_windows, audio_input)
        if subset not in SUBSETS:
            raise ValueError(f"data.subset must be one of {list(SUBSETS)}, got {subset!r}")
        if select_on not in SELECT_ON:
            raise ValueError(f"data.select_on must be one of {list(SELECT_ON)}, got {select_on!r}")
        for key, value in (("batch_size", batch_size), ("image_size", image_size)):
            if int(value) < 1:
                raise ValueError(f"data.{key} must be a positive integer, got {value!r}")
        if eval_batch_size is not None and int(eval_batch_size) < 1:
            raise ValueError(f"data.eval_batch_size must be a positive integer or null, got {eval_batch_size!r}")
        if limit_per_split is not None and int(limit_per_split) < 1:
            raise ValueError(f"data.limit_per_split must be a positive integer or null, got {limit_per_split!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if int(audio_target_frames) < 1:
            raise ValueError(f"data.audio_target_frames must be a positive integer, got {audio_target_frames!r}")
        self.audio_frames = check_audio_setting(audio_input, audio_clip_seconds, audio_target_frames)
        self.root = Path(root)
        self.subset = subset
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.audio_target_frames = int(audio_target_frames)
        self.audio_mean, self.audio_std = float(audio_mean), float(audio_std)
        self.audio_input, self.audio_clip_seconds = audio_input, float(audio_clip_seconds)
        self.select_on = select_on
        self.limit_per_split = limit_per_split
        self.augment = augment
        self.val_split = select_on
        self.test_splits = ["test"]
        self.clips: dict[str, list[AVSClip]] | None = None
        self.dropped: list[tuple[AVSClip, Path]] = []
        self.datasets: dict[str, AVSDataset] = {}
        self._mean_train_mask: torch.Tensor | None = None

    # -------------------------------------------------------------------------------------------- checks
    def expected_paths(self) -> dict[str, Path]:
        """The csv and folders this subset needs (docs/data.md#avsbench)."""
        return subset_paths(self.root, self.subset)

    def validate(self) -> None:
        """Checks the layout and the csv, indexes the clips and drops (with one warning) those with missing files.

        Raises:
            FileNotFoundError: the csv or a data folder is missing (lists every expected path).
            ValueError: the csv lacks a column, or a split has no usable clip.
        """
        if self.clips is not None:
            return
        expected = self.expected_paths()
        missing = [p for key, p in expected.items() if not (p.is_file() if key == "meta" else p.is_dir())]
        if missing:
            listing = "\n".join(
                f"  {'MISSING ' if p in missing else 'ok      '}{p}{'' if key == 'meta' else '/'}"
                for key, p in expected.items()
            )
            root_note = "" if self.root.is_dir() else f" (data.root {self.root} does not exist)"
            raise FileNotFoundError(
                f"AVSBench {self.subset} data not found under data.root={self.root}{root_note}; expected:\n{listing}\n"
                "data.root must be the folder holding Single-source/ and Multi-sources/ of the AVSBench release"
            )
        clips, dropped = index_clips(self.root, self.subset)
        total = sum(len(v) for v in clips.values()) + len(dropped)
        if dropped:
            listed = "; ".join(f"{c.split}/{c.video_id} (missing {p})" for c, p in dropped[:MAX_LISTED])
            more = f"; and {len(dropped) - MAX_LISTED} more" if len(dropped) > MAX_LISTED else ""
            log.warning(
                "AVSBench %s: dropped %d of %d clips listed in %s whose files are missing: %s%s",
                self.subset,
                len(dropped),
                total,
                expected["meta"],
                listed,
                more,
            )
        needed = dict.fromkeys(["train", self.val_split, *self.test_splits])
        for split in needed:
            if not clips[split]:
                raise ValueError(
                    f"AVSBench {self.subset}: no usable clip in split {split!r} of {expected['meta']} "
                    f"(csv rows for it: {sum(1 for c, _ in dropped if c.split == split)} dropped for missing files)"
                )
        if self.limit_per_split is not None:
            clips = {s: v[: int(self.limit_per_split)] for s, v in clips.items()}
        self.clips, self.dropped = clips, dropped
        log.info("AVSBench %s: %s clips (train/val/test)", self.subset, "/".join(str(len(clips[s])) for s in SPLITS))

    @property
    def num_dropped(self) -> int:
        """Clips listed in the csv but dropped because files were missing."""
        return len(self.dropped)

    @property
    def num_skipped(self) -> int:
        """Distinct clips skipped at load time because a file could not be decoded (counted in this process).

        A clip counts once however many passes (validation every epoch, the final validation and test) skipped it.
        """
        return len({(split, video_id) for split, d in self.datasets.items() for video_id in d.skipped})

    def mean_train_mask(self) -> torch.Tensor:
        """(S, S) float64: the average of every annotated training mask at ``image_size`` (the resolution the
        masks are scored at), read once and cached. Unreadable masks are left out."""
        if self._mean_train_mask is None:
            self.validate()
            assert self.clips is not None
            s = self.image_size
            total, count = np.zeros((s, s), dtype=np.float64), 0
            for clip in self.clips["train"]:
                for path in clip.masks:
                    if path is None:  # S4 training clips annotate frame 1 only
                        continue
                    try:
                        total += _load_mask(path, s)
                    except (OSError, ValueError, SyntaxError, EOFError):
                        continue
                    count += 1
            self._mean_train_mask = torch.from_numpy(total / max(count, 1))
        return self._mean_train_mask

    def floor_metrics(self) -> dict[str, float]:
        """The floor a model must clear: ``miou`` and ``fscore`` of one fixed mask for every frame.

        The mask is :meth:`mean_train_mask` thresholded at 0.5 (foreground where more than half of the training
        masks are); it is scored with :class:`cola.metrics.AVSMIoU` and :class:`cola.metrics.AVSFScore` as the
        task scores a model: per clip, on the frames with ground truth (``mask_valid``), on each evaluated split
        (the validation and test splits), leaving out the clips skipped at load time. Reads the masks only.

        Returns:
            ``{"<split>/miou_fixed_mask": ..., "<split>/fscore_fixed_mask": ...}`` per evaluated split (a split
            whose clips were all skipped or unreadable has no entry).
        """
        from cola.metrics import AVSFScore, AVSMIoU

        self.validate()
        assert self.clips is not None
        logits = torch.where(self.mean_train_mask() > 0.5, 1e4, -1e4).float()  # (S, S); sigmoid: exactly 1 and 0
        out: dict[str, float] = {}
        for split in dict.fromkeys([self.val_split, *self.test_splits]):
            skipped = self.datasets[split].skipped if split in self.datasets else {}
            metrics = {"miou": AVSMIoU(), "fscore": AVSFScore()}
            for target, valid in self._eval_masks([c for c in self.clips[split] if c.video_id not in skipped]):
                pred = logits.expand(target.shape)  # (V, F, S, S): the same mask for every frame
                for metric in metrics.values():
                    metric.update(pred, target, valid)
            if int(metrics["miou"].videos):
                out.update({f"{split}/{name}_fixed_mask": float(m.compute()) for name, m in metrics.items()})
        return out

    def _eval_masks(self, clips: Sequence[AVSClip]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ground truth of ``clips`` as the task scores it, ``FLOOR_CLIPS_PER_UPDATE`` clips at a time:
        ``(masks (V, F, S, S) bool, mask_valid (V, F) bool)``, one row per clip; a clip with an unreadable mask
        is left out (the dataset skips it too)."""
        s = self.image_size
        masks: list[np.ndarray] = []
        valid: list[list[bool]] = []
        for i, clip in enumerate(clips):
            frames = np.zeros((NUM_FRAMES, s, s), dtype=bool)  # (F, S, S), empty where not annotated
            try:
                for k, path in enumerate(clip.masks):
                    if path is not None:
                        frames[k] = _load_mask(path, s)
            except (OSError, ValueError, SyntaxError, EOFError):
                frames = None
            if frames is not None:
                masks.append(frames)
                valid.append([path is not None for path in clip.masks])
            if masks and (len(masks) == FLOOR_CLIPS_PER_UPDATE or i == len(clips) - 1):
                yield torch.from_numpy(np.stack(masks)), torch.tensor(valid)
                masks, valid = [], []

    # ------------------------------------------------------------------------------------------ datasets
    def dataset(self, split: str) -> AVSDataset:
        """The dataset of ``split`` (built on first use)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if split not in self.datasets:
            self.validate()
            assert self.clips is not None
            self.datasets[split] = AVSDataset(
                self.clips[split],
                image_size=self.image_size,
                mean=self.mean,
                std=self.std,
                audio_target_frames=self.audio_target_frames,
                audio_mean=self.audio_mean,
                audio_std=self.audio_std,
                augment=self.augment and split == "train",
                name=f"{self.subset}/{split}",
                audio_input=self.audio_input,
                audio_clip_seconds=self.audio_clip_seconds,
                audio_windows=self.audio_windows,
            )
        return self.datasets[split]
