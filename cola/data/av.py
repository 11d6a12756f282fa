"""What the audio-visual DataModules (AVE, AVSBench) share: frame and audio loading with one set of normalisation
constants, skipping of unreadable samples, the argument checks, the index/drop/empty-split bookkeeping of
``validate`` and the per-split datasets. :mod:`cola.data.ave` and :mod:`cola.data.avs` keep what differs: their
layout, their index, their labels or masks.

Audio features: per clip (one per frame), the Kaldi fbank of :func:`cola.data.audio.audio_clip_features`,
normalised with AST's AudioSet statistics (:data:`cola.data.audio.AUDIOSET_MEAN`, ``AUDIOSET_STD``) unless
``audio_mean``/``audio_std`` say otherwise, of the wav's channel 0 or its channel mean (``audio_channel``).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cola.data.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    audio_clip_features,
    check_audio_channel,
    check_audio_input,
    check_audio_setting,
    load_audio,
    resolve_windows,
)
from cola.data.base import CoLADataModule, check_int
from cola.data.images import DECODE_ERRORS, IMAGENET_MEAN, IMAGENET_STD, load_frame
from cola.dicts import check_choice

__all__ = ["SELECT_ON", "SPLITS", "AVDataModule", "AVDataset", "AVInputs", "collate_samples", "to_chw"]

SPLITS = ("train", "val", "test")
SELECT_ON = ("val", "test")
MAX_LISTED = 5  # how many dropped items a warning names


@dataclass(frozen=True)
class AVInputs:
    """The image and audio settings of an audio-visual dataset, checked once: the ``data.*`` keys of the same names,
    which :class:`AVDataModule` takes (so the task YAMLs keep them flat) and hands each of its datasets as this one
    object.

    Attributes:
        image_size: side S of the square frames (and AVS masks) fed to the model.
        mean: image normalisation mean (0-1 scale, RGB; default ImageNet).
        std: image normalisation std.
        audio_target_frames: fbank frames per clip with ``audio_input='interpolate'`` (then the AST ``max_length``);
            at least the clip's frames (98 for 1 s, 193 for 1.95 s).
        audio_mean: fbank normalisation mean (default AST's AudioSet value).
        audio_std: fbank normalisation std.
        audio_input: ``interpolate`` (default: each clip's fbank padded to ``audio_target_frames``, the AST's
            positional grid interpolated to it) or ``pad`` (official: normalised fbank zero-padded to 1024 frames,
            the pretrained grid untouched); see :mod:`cola.data.audio`.
        audio_clip_seconds: length of each audio clip (AVE: one per second, official 1.0; AVS: one window per
            frame, official 1.95).
        audio_windows: clip placement: ``seconds``, ``official`` (the official loaders' spread; see the data
            modules) or ``None`` (official with pad, seconds with interpolate); stored resolved.
        audio_channel: ``mean`` (default: a multi-channel wav's channels averaged) or ``first`` (channel 0, as the
            official AVE and AVS loaders read it); see :func:`cola.data.audio.load_audio`.
        audio_frames: (derived) fbank frames T per clip of the batches, the AST ``max_length`` they need.
    """

    image_size: int = 224
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    audio_target_frames: int = 100
    audio_mean: float = AUDIOSET_MEAN
    audio_std: float = AUDIOSET_STD
    audio_input: str = "interpolate"
    audio_clip_seconds: float = 1.0
    audio_windows: str | None = None
    audio_channel: str = "mean"
    audio_frames: int = field(init=False)

    def __post_init__(self) -> None:
        """Checks every setting (naming its ``data.*`` key) and stores plain values (floats, tuples, the resolved
        ``audio_windows``, the derived ``audio_frames``)."""
        check_audio_input(self.audio_input)
        check_audio_channel(self.audio_channel)
        windows = resolve_windows(self.audio_windows, self.audio_input)
        check_int("image_size", self.image_size)
        check_int("audio_target_frames", self.audio_target_frames)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values (RGB), got {list(self.mean)} and {list(self.std)}")
        if float(self.audio_std) <= 0:
            raise ValueError(f"data.audio_std must be positive, got {self.audio_std!r}")
        frames = check_audio_setting(self.audio_input, self.audio_clip_seconds, self.audio_target_frames)
        derived = dict(
            mean=tuple(self.mean),
            std=tuple(self.std),
            audio_mean=float(self.audio_mean),
            audio_std=float(self.audio_std),
            audio_clip_seconds=float(self.audio_clip_seconds),
            audio_windows=windows,
            audio_frames=frames,
        )
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen: set here, once


class AVDataset(Dataset):
    """One split of an audio-visual dataset; ``__getitem__`` returns a sample dict or ``None`` when a file cannot
    be decoded (recorded in :attr:`skipped`, logged, dropped by the collate function).

    Subclasses implement :meth:`load` (raising on unreadable files) and :meth:`skip_key`, and set :attr:`unit`
    (what one sample is called in the skip warning).

    Args:
        inputs: the image and audio settings (:class:`AVInputs`; ``None``: its defaults).
        augment: random horizontal flip of all frames (and masks) of a sample together.
        name: a label for log messages (e.g. ``ave/train``).
    """

    unit = "sample"

    def __init__(self, *, inputs: AVInputs | None = None, augment: bool = False, name: str = "av") -> None:
        self.inputs = AVInputs() if inputs is None else inputs
        self.mean = np.asarray(self.inputs.mean, dtype=np.float32)  # (3,), broadcast over (..., 3) pixels
        self.std = np.asarray(self.inputs.std, dtype=np.float32)
        self.augment = augment
        self.name = name
        # samples skipped at load time (skip_key -> reason); each DataLoader worker holds its own copy
        self.skipped: dict[str, str] = {}

    @abstractmethod
    def load(self, index: int) -> dict[str, Any]:
        """Loads sample ``index``; raises on unreadable files (``__getitem__`` catches and skips)."""

    @abstractmethod
    def skip_key(self, index: int) -> tuple[str, str]:
        """``(key in skipped, id shown in the warning)`` of sample ``index``."""

    def frames(self, paths: Sequence[Path]) -> np.ndarray:
        """(F, S, S, 3) float32 normalised frames."""
        # per-pixel work in numpy: many tiny torch ops are slow when intra-op threads contend for cores
        frames = np.stack([load_frame(p, self.inputs.image_size) for p in paths]).astype(np.float32) / 255.0
        return (frames - self.mean) / self.std

    def flip(self) -> bool:
        """Whether this sample is flipped (``augment``); torch's RNG, seeded per worker by Lightning."""
        return bool(self.augment and torch.rand(()) < 0.5)

    def audio(self, wav: Path, clips: int) -> torch.Tensor:
        """(clips, T, 128) normalised fbank of the 16 kHz ``wav`` (its ``audio_channel``), one clip per frame."""
        return self.audio_features(self.waveform(wav), clips)

    def waveform(self, wav: Path) -> torch.Tensor:
        """(N,) 16 kHz waveform of ``wav``: channel 0 or the channel mean, as ``audio_channel`` says."""
        return load_audio(wav, channel=self.inputs.audio_channel)

    def audio_features(self, waveform: torch.Tensor, clips: int) -> torch.Tensor:
        """(clips, T, 128) normalised fbank of a (N,) 16 kHz mono waveform with this dataset's audio settings."""
        return audio_clip_features(
            waveform,
            seconds=clips,
            target_frames=self.inputs.audio_target_frames,
            mean=self.inputs.audio_mean,
            std=self.inputs.audio_std,
            audio_input=self.inputs.audio_input,
            clip_seconds=self.inputs.audio_clip_seconds,
            windows=self.inputs.audio_windows,
        )

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self.load(index)
        except DECODE_ERRORS as err:  # PIL decode errors; AudioReadError is a ValueError
            key, shown = self.skip_key(index)
            self.skipped[key] = f"{type(err).__name__}: {err}"
            logging.getLogger(type(self).__module__).warning(
                "%s: skipping %s %r, a file could not be read (%s: %s); %d %s(s) skipped so far",
                self.name,
                self.unit,
                shown,
                type(err).__name__,
                err,
                len(self.skipped),
                self.unit,
            )
            return None


def collate_samples(samples: list[dict[str, Any] | None], *, keys: Sequence[str]) -> dict[str, Any] | None:
    """Stacks the tensors under ``keys`` and lists the ``video_id``s, dropping the ``None`` of unreadable
    samples; ``None`` when nothing is left (the task skips that batch)."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    batch: dict[str, Any] = {key: torch.stack([s[key] for s in samples]) for key in keys}
    batch["video_id"] = [s["video_id"] for s in samples]
    return batch


def to_chw(frames: np.ndarray) -> torch.Tensor:
    """(F, S, S, 3) numpy -> (F, 3, S, S) contiguous tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))


class AVDataModule(CoLADataModule):
    """The shared part of the AVE and AVSBench DataModules (same arguments and defaults for both; the subclasses add
    ``root`` and their own, AVS: ``subset``).

    Args:
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        image_size, mean, std, audio_target_frames, audio_mean, audio_std: image and audio settings, see
            :class:`AVInputs`.
        select_on: split the validation loader runs on: ``val`` (default) or ``test`` (what the official code
            selects checkpoints on).
        limit_per_split: keep only the first N entries of each split (quick runs).
        augment: random horizontal flips of training samples.
        audio_input, audio_clip_seconds, audio_windows, audio_channel: audio settings, see :class:`AVInputs`.

    Subclasses set :attr:`label` (log prefix), :attr:`unit` and :attr:`units` (what the entries are, in messages),
    and implement :meth:`check_layout`, :meth:`read_index` and :meth:`build_dataset`.

    Attributes:
        inputs: the image and audio settings (:class:`AVInputs`) every split's dataset gets.
        index: ``{split: [item]}`` after :meth:`validate` (items with missing files dropped).
        dropped: ``[(item, first missing path)]`` of the dropped items.
    """

    label = "AV"
    unit = "item"  # one entry of the index, in messages
    units = "items"  # the dropped entries, in the drop warning

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        audio_target_frames: int = 100,
        audio_mean: float = AUDIOSET_MEAN,
        audio_std: float = AUDIOSET_STD,
        select_on: str = "val",
        limit_per_split: int | None = None,
        augment: bool = False,
        audio_input: str = "interpolate",
        audio_clip_seconds: float = 1.0,
        audio_windows: str | None = None,
        audio_channel: str = "mean",
    ) -> None:
        super().__init__()
        self.inputs = AVInputs(
            image_size=image_size,
            mean=mean,
            std=std,
            audio_target_frames=audio_target_frames,
            audio_mean=audio_mean,
            audio_std=audio_std,
            audio_input=audio_input,
            audio_clip_seconds=audio_clip_seconds,
            audio_windows=audio_windows,
            audio_channel=audio_channel,
        )
        check_choice("data.select_on", select_on, SELECT_ON)
        self.set_loader_args(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            limit_per_split=limit_per_split,
        )
        self.root = Path(root)
        self.select_on = select_on
        self.augment = bool(augment)
        self.val_split = select_on
        self.test_splits = ["test"]
        self.index: dict[str, list] | None = None
        self.dropped: list[tuple[Any, Path]] = []

    def dataset_kwargs(self, split: str, *, train: bool) -> dict[str, Any]:
        """The :class:`AVDataset` arguments of ``split``: image and audio settings, augmentation when ``train``."""
        return dict(inputs=self.inputs, augment=self.augment and train)

    # -------------------------------------------------------------------------------------------- checks
    @abstractmethod
    def check_layout(self) -> None:
        """Raises ``FileNotFoundError`` listing what is expected when the layout under ``root`` is incomplete."""

    @abstractmethod
    def read_index(self) -> tuple[dict[str, list], list[tuple[Any, Path]], dict[str, int]]:
        """Reads the annotations: ``({split: [usable item]}, [(dropped item, first missing path)],
        {split: rows listed})``; raises ``ValueError`` naming the file and line of a malformed entry."""

    @abstractmethod
    def describe_dropped(self, item: Any, missing: Path) -> str:
        """One dropped item in the drop warning."""

    def dropped_note(self) -> str:
        """Extra words after the drop warning's count (e.g. where to look for why)."""
        return ""

    def validate(self) -> None:
        """Checks the layout, reads the index and drops (with one warning) the items whose files are missing.

        Raises:
            FileNotFoundError: a file or folder of the layout is missing (the message lists what is expected).
            ValueError: a malformed annotation (naming the file), or an evaluated split without a usable item.
        """
        if self.index is not None:
            return
        self.check_layout()
        index, dropped, listed = self.read_index()
        log = logging.getLogger(type(self).__module__)
        if dropped:
            shown = "; ".join(self.describe_dropped(item, path) for item, path in dropped[:MAX_LISTED])
            more = f"; and {len(dropped) - MAX_LISTED} more" if len(dropped) > MAX_LISTED else ""
            log.warning(
                "%s: dropped %d of %d %s whose files are missing%s: %s%s",
                self.label,
                len(dropped),
                sum(listed.values()),
                self.units,
                self.dropped_note(),
                shown,
                more,
            )
        for split in dict.fromkeys([self.train_split, *self.eval_splits]):
            if not index[split]:
                raise ValueError(
                    f"{self.label}: no usable {self.unit} in split {split!r} ({listed[split]} listed, "
                    f"{listed[split] - len(index[split])} dropped for missing files; {self.split_source(split)})"
                )
        if self.limit_per_split is not None:
            index = {s: v[: self.limit_per_split] for s, v in index.items()}
        self.index, self.dropped = index, dropped
        log.info("%s: %s %s (train/val/test)", self.label, "/".join(str(len(index[s])) for s in SPLITS), self.units)

    def split_source(self, split: str) -> str:
        """The file that lists ``split`` (named in the empty-split error)."""
        return str(self.root)

    @property
    def num_dropped(self) -> int:
        """Items listed in the annotations but dropped because their files were missing."""
        return len(self.dropped)

    def dataset(self, split: str, *, train: bool | None = None) -> AVDataset:
        """The dataset of ``split`` (built on first use; the training split's carries the augmentation).

        Raises:
            ValueError: ``split`` is not one of train, val, test.
        """
        check_choice("split", split, SPLITS)
        return super().dataset(split, train=train)  # type: ignore[return-value]
