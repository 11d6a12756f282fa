"""AVE (Audio-Visual Event localisation, Tian et al. 2018): per-second event classification of 10-s videos.

One sample is one annotation row ``Category&VideoID&Quality&Start&End`` (docs/data.md#ave): second t = 0..9 is
labelled with the row's category when ``Start <= t < End`` (end exclusive), else background. The label
space is fixed: the 28 events of :data:`AVE_CATEGORIES` (their order of first appearance in the release's
``Annotations.txt``) and ``background`` = 28, 29 classes. A video id may sit in several rows (different
categories, sometimes different splits); every row is its own sample, as in the official labels. The
release's ``0&0`` row labels all ten seconds background.

Layout under ``root`` (the release's ``AVE_Dataset/`` after ``python scripts/prepare_ave.py ROOT``)::

    AVE/<video_id>.mp4                   the release videos (read only by the preparation script)
    Annotations.txt                      all rows (the release's copy starts with a header line)
    trainSet.txt valSet.txt testSet.txt  rows of each split (no header); 3,339 / 402 / 402 rows
    frames/<video_id>/<t>.jpg            t = 0..9: the frame nearest the centre of second t (t + 0.5 s)
    audio/<video_id>.wav                 16 kHz, the source's channels (mostly stereo), 10 s
    audio/channels.txt                   how the wavs were written: ``source`` (channels kept) or ``mean``

Batches (dict): ``pixel_values (B, 10, 3, S, S)`` normalised, ``input_values (B, 10, T, 128)`` normalised
Kaldi fbank per second (:func:`cola.data.audio.audio_clip_features`; ``T`` = 1024 with
``audio_input='pad'``, the official input, else ``audio_target_frames``) of the wav's channel mean or, with
``audio_channel='first'`` (the official loader), its channel 0, ``labels (B, 10)`` int64 in [0, 29), ``video_id``
list. A folder prepared before the wavs kept their channels holds mono wavs (``audio/channels.txt`` missing or
``mean``): ``first`` then reads the downmix, with one warning; rerunning the preparation rewrites them.

Robustness: :meth:`AVEDataModule.validate` checks the layout before any long work (an unprepared root
stops with the preparation command); rows whose video has no prepared frames or audio are dropped with one
warning; a file that exists but cannot be decoded is skipped at load time with a warning and counted (the
collate function drops the sample), so a corrupt file never stops an epoch.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from cola.data.av import SELECT_ON, SPLITS, AVDataModule, AVDataset, collate_samples, to_chw
from cola.data.ave_annotations import (
    AVE_CATEGORIES,
    BACKGROUND,
    BACKGROUND_INDEX,
    CLASS_NAMES,
    HEADER,
    NUM_CLASSES,
    NUM_SECONDS,
    SPLIT_FILES,
    AVERow,
    category_index,
    category_order,
    parse_annotations,
    row_key,
    segment_labels,
)
from cola.data.images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

__all__ = [
    "BACKGROUND",
    "CLASS_NAMES",
    "category_index",
    "row_key",
    "AVE_CATEGORIES",
    "BACKGROUND_INDEX",
    "HEADER",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_CLASSES",
    "NUM_SECONDS",
    "SELECT_ON",
    "SPLIT_FILES",
    "SPLITS",
    "AVEDataModule",
    "AVEDataset",
    "AVERow",
    "category_order",
    "collate_ave",
    "parse_annotations",
    "segment_labels",
]

VIDEO_DIR, FRAMES_DIR, AUDIO_DIR = "AVE", "frames", "audio"
PREPARE_REPORT = "prepare_report.json"
CHANNELS_FILE = "channels.txt"  # in AUDIO_DIR: how the preparation wrote the wavs (one of PREPARED_CHANNELS)
PREPARED_CHANNELS = ("source", "mean")  # the source's channels kept | averaged to mono


def prepare_command(root: str | Path) -> str:
    """The command that turns the release at ``root`` into frames and wavs."""
    return f"python scripts/prepare_ave.py {shlex.quote(str(root))}"


# ---------------------------------------------------------------------------------------------- layout
def frame_path(root: str | Path, video_id: str, t: int) -> Path:
    """``root/frames/<video_id>/<t>.jpg``: the frame nearest the centre of second t (t = 0..9)."""
    return Path(root) / FRAMES_DIR / video_id / f"{t}.jpg"


def audio_path(root: str | Path, video_id: str) -> Path:
    """``root/audio/<video_id>.wav``: 16 kHz; AVE: the source's channels (mono when an older version prepared it),
    MUSIC-AVQA: mono."""
    return Path(root) / AUDIO_DIR / f"{video_id}.wav"


def prepared_channels(root: str | Path) -> str | None:
    """How the preparation wrote ``root/audio/*.wav``: ``source`` (each source's channels kept), ``mean`` (averaged
    to mono) or ``None`` (no wav yet).

    Read from ``root/audio/channels.txt``. Without it (or with an unknown word in it), wavs that exist were written
    by a preparation older than the file, which averaged the channels: ``mean``.
    """
    folder = Path(root) / AUDIO_DIR
    try:
        word = (folder / CHANNELS_FILE).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        word = None
    if word in PREPARED_CHANNELS:
        return word
    if not folder.is_dir():
        return None
    with os.scandir(folder) as entries:  # stops at the first wav, not a listing of thousands
        has_wav = any(e.name.endswith(".wav") and not e.name.startswith(".") for e in entries)
    return "mean" if has_wav else None


def missing_prepared(root: str | Path, video_id: str, *, num_seconds: int = NUM_SECONDS) -> Path | None:
    """The first missing prepared file of a video (frames, then audio), or ``None`` when all exist."""
    for t in range(num_seconds):
        p = frame_path(root, video_id, t)
        if not os.path.isfile(p):
            return p
    wav = audio_path(root, video_id)
    return None if os.path.isfile(wav) else wav


# ------------------------------------------------------------------------------------------------ loading
class AVEDataset(AVDataset):
    """The rows of one split (one sample each); see :class:`cola.data.av.AVDataset` for the other arguments.

    Args:
        root: the prepared AVE folder.
        rows: the annotation rows.
        **kwargs: ``inputs`` (the image and audio settings), ``augment`` of :class:`cola.data.av.AVDataset`.
    """

    unit = "video"

    def __init__(self, root: str | Path, rows: Sequence[AVERow], **kwargs: Any) -> None:
        super().__init__(**{"name": "ave", **kwargs})
        self.root = Path(root)
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def skip_key(self, index: int) -> tuple[str, str]:
        row = self.rows[index]
        return row_key(row), row.video_id

    def load(self, index: int) -> dict[str, Any]:
        """Loads row ``index``; raises on unreadable files (``__getitem__`` catches and skips)."""
        row = self.rows[index]
        frames = self.frames([frame_path(self.root, row.video_id, t) for t in range(NUM_SECONDS)])  # (10, S, S, 3)
        if self.flip():
            frames = frames[:, :, ::-1]
        return {
            "pixel_values": to_chw(frames),  # (10, 3, S, S)
            "input_values": self.audio(audio_path(self.root, row.video_id), NUM_SECONDS),  # (10, T, 128)
            "labels": segment_labels(row),  # (10,)
            "video_id": row.video_id,
        }


collate_ave = partial(collate_samples, keys=("pixel_values", "input_values", "labels"))
"""Stacks AVE samples, dropping the ``None`` of unreadable videos; ``None`` when nothing is left."""


# --------------------------------------------------------------------------------------------- datamodule
class AVEDataModule(AVDataModule):
    """AVE from the prepared release layout under ``root`` (see the module docstring).

    Args:
        root: the ``AVE_Dataset`` folder (with ``frames/`` and ``audio/`` from ``scripts/prepare_ave.py``).
        batch_size, eval_batch_size, num_workers, image_size, mean, std, audio_*, select_on, limit_per_split,
            augment: see :class:`cola.data.av.AVDataModule` (official AVE: batch 2, 1-s clips, clip t = second t
            with ``seconds``, spread with a 0.1 s end margin with ``official``).

    Attributes:
        audio_frames: fbank frames T per clip of the batches (the AST ``max_length`` these need).
        val_split: the split of the validation loader (``select_on``).
        test_splits: ``["test"]``.
        eval_splits: the distinct splits evaluated, validation first.
        rows: ``{split: [AVERow]}`` after :meth:`validate` (rows with missing files dropped; ``index``).
        dropped: ``[(row, first missing path)]`` of the dropped rows.
    """

    label = "AVE"
    unit = "row"
    units = "split rows"

    def __init__(self, *, root: str | Path, **kwargs: Any) -> None:
        super().__init__(root=root, **kwargs)
        self.num_classes = NUM_CLASSES
        self.class_names = CLASS_NAMES

    @property
    def rows(self) -> dict[str, list[AVERow]] | None:
        """``{split: [AVERow]}`` after :meth:`validate` (rows with missing files dropped)."""
        return self.index

    def collate(self):
        return collate_ave

    def validate(self) -> None:
        """:meth:`cola.data.av.AVDataModule.validate`, then one warning when ``audio_channel='first'`` meets wavs an
        older preparation downmixed (``first`` then reads their channel mean; training goes on)."""
        fresh = self.index is None
        super().validate()
        if fresh and self.inputs.audio_channel == "first" and prepared_channels(self.root) == "mean":
            log.warning(
                "AVE: data.audio_channel=first, but the wavs in %s were downmixed to mono by an older preparation, "
                "so channel 0 is the channels' mean; rerun `%s` to rewrite them with the source's channels (it "
                "decodes the downmixed videos again)",
                self.root / AUDIO_DIR,
                prepare_command(self.root),
            )

    # -------------------------------------------------------------------------------------------- checks
    def check_layout(self) -> None:
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(
                f"AVE data.root={root} does not exist; expected the AVE_Dataset folder of the release "
                f"(AVE/*.mp4, trainSet.txt, valSet.txt, testSet.txt), prepared with `{prepare_command(root)}`"
            )
        split_files = {s: root / f for s, f in SPLIT_FILES.items()}
        missing_splits = [p for p in split_files.values() if not p.is_file()]
        unprepared = [d for d in (FRAMES_DIR, AUDIO_DIR) if not (root / d).is_dir()]
        if not unprepared and not missing_splits:
            return
        problems = []
        if missing_splits:
            problems.append("missing split file(s): " + ", ".join(str(p) for p in missing_splits))
        if unprepared:
            missing = " and ".join(f"{d}/" for d in unprepared)
            if (root / VIDEO_DIR).is_dir():
                problems.append(
                    f"{root} holds the AVE release (AVE/) but not its prepared {missing}; prepare it once "
                    f"(resumable) with:\n    {prepare_command(root)}"
                )
            else:
                problems.append(
                    f"{root} has neither AVE/ (the release videos) nor the prepared {missing}; prepare the release "
                    f"with:\n    {prepare_command(root)}"
                )
        nested = root / "AVE_Dataset"
        if nested.is_dir():
            problems.append(f"(data.root may need to be {nested})")
        raise FileNotFoundError(
            f"AVE data at data.root={root} is incomplete:\n  " + "\n  ".join(problems) + "\n"
            "expected layout: AVE/<id>.mp4, Annotations.txt, trainSet.txt, valSet.txt, testSet.txt, "
            "frames/<id>/<t>.jpg (t = 0..9), audio/<id>.wav (docs/data.md#ave)"
        )

    def read_index(self) -> tuple[dict[str, list[AVERow]], list[tuple[AVERow, Path]], dict[str, int]]:
        """The rows of each split file whose prepared frames and audio exist, the dropped rows and the row counts.

        Raises:
            ValueError: a malformed or unknown-category row (naming file and line).
        """
        rows: dict[str, list[AVERow]] = {}
        for split, name in SPLIT_FILES.items():
            rows[split] = parse_annotations(self.root / name)
            for row in rows[split]:
                if row.category not in AVE_CATEGORIES:
                    raise ValueError(
                        f"{row.where()}: unknown AVE category {row.category!r}; expected one of {list(AVE_CATEGORIES)}"
                    )
        missing_cache: dict[str, Path | None] = {}
        kept: dict[str, list[AVERow]] = {s: [] for s in SPLITS}
        dropped: list[tuple[AVERow, Path]] = []
        for split in SPLITS:
            for row in rows[split]:
                if row.video_id not in missing_cache:
                    missing_cache[row.video_id] = missing_prepared(self.root, row.video_id)
                missing = missing_cache[row.video_id]
                if missing is None:
                    kept[split].append(row)
                else:
                    dropped.append((row, missing))
        return kept, dropped, {s: len(v) for s, v in rows.items()}

    def describe_dropped(self, item: AVERow, missing: Path) -> str:
        return f"{item.video_id} ({item.where()}: missing {missing})"

    def dropped_note(self) -> str:
        report = self.root / PREPARE_REPORT
        if report.is_file():
            return f" (prepared frames/audio; see {report} for videos that could not be decoded)"
        return (
            f" (prepared frames/audio; {report} is missing: preparation may not have finished; rerun "
            f"`{prepare_command(self.root)}`)"
        )

    def split_source(self, split: str) -> str:
        return str(self.root / SPLIT_FILES[split])

    def split_floor_metrics(self, split: str) -> dict[str, float]:
        """The floor a model must clear: ``acc`` of always predicting the training split's most frequent class.

        The class is counted over every second of the training rows (background included; ties go to the lower
        class id) and scored on every second of ``split``, leaving out the rows skipped at load time as the
        model's evaluation does. Reads the annotations only.

        Returns:
            ``{"<split>/acc_majority": accuracy}`` (``{}`` when every row of the split was skipped).
        """
        self.validate()
        assert self.index is not None
        counts = torch.zeros(NUM_CLASSES, dtype=torch.int64)  # (29,)
        for row in self.index["train"]:
            counts += torch.bincount(segment_labels(row), minlength=NUM_CLASSES)
        majority = int(counts.argmax())  # the first maximum: the lower class id on a tie
        skipped = {key for d in self.built(split) for key in d.skipped}
        rows = [r for r in self.index[split] if row_key(r) not in skipped]
        if not rows:
            return {}
        labels = torch.stack([segment_labels(r) for r in rows])  # (N, 10)
        return {f"{split}/acc_majority": float((labels == majority).double().mean())}

    # ------------------------------------------------------------------------------------------ datasets
    def build_dataset(self, split: str, *, train: bool) -> AVEDataset:
        assert self.index is not None
        return AVEDataset(self.root, self.index[split], name=f"ave/{split}", **self.dataset_kwargs(split, train=train))
