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
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cola.data.av import SELECT_ON, SPLITS, AVDataModule, AVDataset, collate_samples, to_chw
from cola.data.images import DECODE_ERRORS, IMAGENET_MEAN, IMAGENET_STD, load_binary_mask
from cola.dicts import check_choice

log = logging.getLogger(__name__)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_FRAMES",
    "SELECT_ON",
    "SPLITS",
    "SUBSETS",
    "AVSClip",
    "AVSDataModule",
    "AVSDataset",
    "clip_paths",
    "collate_avs",
    "index_clips",
    "read_meta_csv",
    "subset_paths",
]

SUBSETS = ("s4", "ms3")
NUM_FRAMES = 5
# the csv columns we read, by header name (S4 also has a start-time column, unused)
META_COLUMNS = {"s4": ("name", "category", "split"), "ms3": ("video_id", "split")}
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
    check_choice("subset", subset, SUBSETS)
    root = Path(root)
    if subset == "s4":
        base, data, csv_name = root / "Single-source", root / "Single-source" / "s4_data", "s4_meta_data.csv"
    else:
        base, data, csv_name = root / "Multi-sources", root / "Multi-sources" / "ms3_data", "ms3_meta_data.csv"
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
class AVSDataset(AVDataset):
    """The clips of one split; see :class:`cola.data.av.AVDataset` for the other arguments.

    Args:
        clips: the clips (from :func:`index_clips`).
        **kwargs: ``inputs`` (the image and audio settings), ``augment`` of :class:`cola.data.av.AVDataset`.
    """

    unit = "clip"

    def __init__(self, clips: Sequence[AVSClip], **kwargs: Any) -> None:
        super().__init__(**{"name": "avs", **kwargs})
        self.clips = list(clips)

    def __len__(self) -> int:
        return len(self.clips)

    def skip_key(self, index: int) -> tuple[str, str]:
        return self.clips[index].video_id, self.clips[index].video_id

    def load(self, index: int) -> dict[str, Any]:
        """Loads clip ``index``; raises on unreadable files (``__getitem__`` catches and skips)."""
        clip = self.clips[index]
        s = self.inputs.image_size
        frames = self.frames(clip.frames)  # (5, S, S, 3)
        masks_np = np.zeros((NUM_FRAMES, s, s), dtype=np.float32)  # (5, S, S)
        valid_np = np.zeros(NUM_FRAMES, dtype=bool)  # (5,)
        for k, path in enumerate(clip.masks):
            if path is not None:
                masks_np[k] = load_binary_mask(path, s)
                valid_np[k] = True
        if self.flip():
            frames, masks_np = frames[:, :, ::-1], masks_np[:, :, ::-1]
        return {
            "pixel_values": to_chw(frames),  # (5, 3, S, S)
            "input_values": self.audio(clip.wav, NUM_FRAMES),  # (5, T, 128)
            "masks": torch.from_numpy(np.ascontiguousarray(masks_np)),
            "mask_valid": torch.from_numpy(valid_np),
            "video_id": clip.video_id,
        }


collate_avs = partial(collate_samples, keys=("pixel_values", "input_values", "masks", "mask_valid"))
"""Stacks AVS samples, dropping the ``None`` of unreadable clips; ``None`` when nothing is left."""


class AVSDataModule(AVDataModule):
    """AVSBench S4 or MS3 from the release layout under ``root`` (see the module docstring).

    Args:
        root: the folder holding ``Single-source/`` and ``Multi-sources/``.
        subset: ``s4`` or ``ms3``.
        batch_size, eval_batch_size, num_workers, image_size, mean, std, audio_*, select_on, limit_per_split,
            augment: see :class:`cola.data.av.AVDataModule` (AVS windows: ``seconds`` puts window k at second
            k - 1, ``official`` starts them at ``linspace(0, N - sr (audio_clip_seconds + 0.1), 5)``).

    Attributes:
        audio_frames: fbank frames T per window of the batches (the AST ``max_length`` these need).
        val_split: the split name of the validation loader (``select_on``).
        test_splits: ``["test"]``.
    """

    collate_fn = staticmethod(collate_avs)

    label = "AVSBench"
    unit = "clip"
    units = "clips"

    def __init__(self, *, root: str | Path, subset: str = "s4", **kwargs: Any) -> None:
        check_choice("data.subset", subset, SUBSETS)
        super().__init__(root=root, **kwargs)
        self.subset = subset
        self.label = f"AVSBench {subset}"
        self._mean_train_mask: torch.Tensor | None = None

    @property
    def clips(self) -> dict[str, list[AVSClip]] | None:
        """``{split: [AVSClip]}`` after :meth:`validate` (clips with missing files dropped)."""
        return self.index

    def collate(self):
        return collate_avs

    # -------------------------------------------------------------------------------------------- checks
    def expected_paths(self) -> dict[str, Path]:
        """The csv and folders this subset needs (docs/data.md#avsbench)."""
        return subset_paths(self.root, self.subset)

    def check_layout(self) -> None:
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

    def read_index(self) -> tuple[dict[str, list[AVSClip]], list[tuple[AVSClip, Path]], dict[str, int]]:
        """The clips of the meta csv whose files exist, the dropped ones and the clips listed per split."""
        clips, dropped = index_clips(self.root, self.subset)
        listed = {s: len(v) + sum(1 for c, _ in dropped if c.split == s) for s, v in clips.items()}
        return clips, dropped, listed

    def describe_dropped(self, item: AVSClip, missing: Path) -> str:
        return f"{item.split}/{item.video_id} (missing {missing})"

    def dropped_note(self) -> str:
        return f" (listed in {self.expected_paths()['meta']})"

    def split_source(self, split: str) -> str:
        return str(self.expected_paths()["meta"])

    def mean_train_mask(self) -> torch.Tensor:
        """(S, S) float64: the average of every annotated training mask at ``image_size`` (the resolution the
        masks are scored at), read once and cached. Unreadable masks are left out."""
        if self._mean_train_mask is None:
            self.validate()
            assert self.index is not None
            s = self.inputs.image_size
            total, count = np.zeros((s, s), dtype=np.float64), 0
            for clip in self.index["train"]:
                for path in clip.masks:
                    if path is None:  # S4 training clips annotate frame 1 only
                        continue
                    try:
                        total += load_binary_mask(path, s)
                    except DECODE_ERRORS:
                        continue
                    count += 1
            self._mean_train_mask = torch.from_numpy(total / max(count, 1))
        return self._mean_train_mask

    def split_floor_metrics(self, split: str) -> dict[str, float]:
        """The floor a model must clear: ``miou`` and ``fscore`` of one fixed mask for every frame.

        The mask is :meth:`mean_train_mask` thresholded at 0.5 (foreground where more than half of the training
        masks are); it is scored with :class:`cola.metrics.AVSMIoU` and :class:`cola.metrics.AVSFScore` as the
        task scores a model: per clip, on the frames with ground truth (``mask_valid``), leaving out the clips
        skipped at load time. Reads the masks only.

        Returns:
            ``{"<split>/miou_fixed_mask": ..., "<split>/fscore_fixed_mask": ...}`` (``{}`` when every clip of
            the split was skipped or unreadable).
        """
        from cola.metrics import AVSFScore, AVSMIoU  # the floor is scored exactly as the task scores a model

        self.validate()
        assert self.index is not None
        logits = torch.where(self.mean_train_mask() > 0.5, 1e4, -1e4).float()  # (S, S); sigmoid: exactly 1 and 0
        skipped = {key for d in self.built(split) for key in d.skipped}
        metrics = {"miou": AVSMIoU(), "fscore": AVSFScore()}
        for target, valid in self._eval_masks([c for c in self.index[split] if c.video_id not in skipped]):
            pred = logits.expand(target.shape)  # (V, F, S, S): the same mask for every frame
            for metric in metrics.values():
                metric.update(pred, target, valid)
        if not int(metrics["miou"].videos):
            return {}
        return {f"{split}/{name}_fixed_mask": float(m.compute()) for name, m in metrics.items()}

    def _eval_masks(self, clips: Sequence[AVSClip]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ground truth of ``clips`` as the task scores it, ``FLOOR_CLIPS_PER_UPDATE`` clips at a time:
        ``(masks (V, F, S, S) bool, mask_valid (V, F) bool)``, one row per clip; a clip with an unreadable mask
        is left out (the dataset skips it too)."""
        s = self.inputs.image_size
        masks: list[np.ndarray] = []
        valid: list[list[bool]] = []
        for i, clip in enumerate(clips):
            frames = np.zeros((NUM_FRAMES, s, s), dtype=bool)  # (F, S, S), empty where not annotated
            try:
                for k, path in enumerate(clip.masks):
                    if path is not None:
                        frames[k] = load_binary_mask(path, s)
            except DECODE_ERRORS:
                frames = None
            if frames is not None:
                masks.append(frames)
                valid.append([path is not None for path in clip.masks])
            if masks and (len(masks) == FLOOR_CLIPS_PER_UPDATE or i == len(clips) - 1):
                yield torch.from_numpy(np.stack(masks)), torch.tensor(valid)
                masks, valid = [], []

    # ------------------------------------------------------------------------------------------ datasets

    # ------------------------------------------------------------------------------------------ datasets
    def build_dataset(self, split: str, *, train: bool) -> AVSDataset:
        assert self.index is not None
        return AVSDataset(self.index[split], name=f"{self.subset}/{split}", **self.dataset_kwargs(split, train=train))
