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
    audio/<video_id>.wav                 16 kHz mono, 10 s

Batches (dict): ``pixel_values (B, 10, 3, S, S)`` normalised, ``input_values (B, 10, T, 128)`` normalised
Kaldi fbank per second (:func:`cola.data.audio.audio_clip_features`; ``T`` = 1024 with
``audio_input='pad'``, the official input, else ``audio_target_frames``), ``labels (B, 10)`` int64 in
[0, 29), ``video_id`` list.

Robustness: :meth:`AVEDataModule.validate` checks the layout before any long work (an unprepared root
stops with the preparation command); rows whose video has no prepared frames or audio are dropped with one
warning; a file that exists but cannot be decoded is skipped at load time with a warning and counted (the
collate function drops the sample), so a corrupt file never stops an epoch.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from cola.data.audio import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    audio_clip_features,
    check_audio_input,
    check_audio_setting,
    load_audio,
    resolve_windows,
)
from cola.data.splits import SplitDataModule

log = logging.getLogger(__name__)

# The 28 AVE events in order of first appearance in the release's Annotations.txt; index = class id.
AVE_CATEGORIES: tuple[str, ...] = (
    "Church bell",
    "Male speech, man speaking",
    "Bark",
    "Fixed-wing aircraft, airplane",
    "Race car, auto racing",
    "Female speech, woman speaking",
    "Helicopter",
    "Violin, fiddle",
    "Flute",
    "Ukulele",
    "Frying (food)",
    "Truck",
    "Shofar",
    "Motorcycle",
    "Acoustic guitar",
    "Train horn",
    "Clock",
    "Banjo",
    "Goat",
    "Baby cry, infant cry",
    "Bus",
    "Chainsaw",
    "Cat",
    "Horse",
    "Toilet flush",
    "Rodents, rats, mice",
    "Accordion",
    "Mandolin",
)
BACKGROUND = "background"
BACKGROUND_INDEX = len(AVE_CATEGORIES)  # 28
NUM_CLASSES = len(AVE_CATEGORIES) + 1  # 29
CLASS_NAMES: tuple[str, ...] = (*AVE_CATEGORIES, BACKGROUND)
NUM_SECONDS = 10
HEADER = ("Category", "VideoID", "Quality", "Start", "End")
SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
SELECT_ON = ("val", "test")
VIDEO_DIR, FRAMES_DIR, AUDIO_DIR = "AVE", "frames", "audio"
PREPARE_REPORT = "prepare_report.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_LISTED = 5  # how many dropped rows a warning names


def prepare_command(root: str | Path) -> str:
    """The command that turns the release at ``root`` into frames and wavs."""
    return f"python scripts/prepare_ave.py {shlex.quote(str(root))}"


# ------------------------------------------------------------------------------------------- annotations
@dataclass(frozen=True)
class AVERow:
    """One annotation row.

    Attributes:
        category: the event name (one of :data:`AVE_CATEGORIES` in the release).
        video_id: the YouTube id (file stem of ``AVE/<video_id>.mp4``).
        quality: the release's quality flag (always ``good``).
        start: first event second (inclusive).
        end: last event second (exclusive); ``start == end`` means no event second.
        source: the file the row was read from.
        line: its 1-based line number there.
    """

    category: str
    video_id: str
    quality: str
    start: int
    end: int
    source: str = ""
    line: int = 0

    def where(self) -> str:
        """``file, line N`` for error messages."""
        return f"{self.source}, line {self.line}"


def _is_header(fields: list[str]) -> bool:
    return [f.strip().lower() for f in fields] == [h.lower() for h in HEADER]


def parse_annotations(path: str | Path, *, num_seconds: int = NUM_SECONDS) -> list[AVERow]:
    """Reads an AVE annotation or split file (``Category&VideoID&Quality&Start&End`` per line).

    The release's ``Annotations.txt`` starts with that header line, other copies and the split files do
    not; a header on the first non-empty line is skipped. Blank lines are ignored.

    Args:
        path: ``Annotations.txt``, ``trainSet.txt``, ``valSet.txt`` or ``testSet.txt``.
        num_seconds: video length; rows must satisfy ``0 <= Start <= End <= num_seconds``.

    Returns:
        The rows in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a malformed line (naming the file, the line number, the line and what was expected).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AVE annotation file not found: {path}")
    rows: list[AVERow] = []
    seen_content = False
    with open(path, encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a byte-order mark
        for line_no, raw in enumerate(f, start=1):
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("&")
            if not seen_content:
                seen_content = True
                if _is_header(fields):
                    continue
            where = f"{path}, line {line_no}"
            if len(fields) != len(HEADER):
                raise ValueError(
                    f"{where}: expected {len(HEADER)} '&'-separated fields {'&'.join(HEADER)}, "
                    f"got {len(fields)}: {line!r}"
                )
            category, video_id, quality, start_s, end_s = (x.strip() for x in fields)
            if not category or not video_id:
                raise ValueError(f"{where}: empty Category or VideoID in {line!r}")
            try:
                start, end = int(start_s), int(end_s)
            except ValueError:
                raise ValueError(
                    f"{where}: Start and End must be whole seconds, got Start={start_s!r}, End={end_s!r} in {line!r}"
                ) from None
            if not 0 <= start <= end <= num_seconds:
                raise ValueError(
                    f"{where}: expected 0 <= Start <= End <= {num_seconds} (seconds, End exclusive), "
                    f"got Start={start}, End={end}"
                )
            rows.append(AVERow(category, video_id, quality, start, end, str(path), line_no))
    return rows


def category_order(rows: Iterable[AVERow]) -> list[str]:
    """Category names in order of first appearance (on the release's Annotations.txt: :data:`AVE_CATEGORIES`)."""
    return list(dict.fromkeys(r.category for r in rows))


def category_index(name: str) -> int:
    """Class id of an event name (0..27) or of ``background`` (28).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name == BACKGROUND:
        return BACKGROUND_INDEX
    try:
        return AVE_CATEGORIES.index(name)
    except ValueError:
        raise ValueError(f"unknown AVE category {name!r}; expected one of {list(AVE_CATEGORIES)}") from None


def row_key(row: AVERow) -> str:
    """The id of a row in skip bookkeeping: ``video_id (file, line N)`` (a video may sit in several rows)."""
    return f"{row.video_id} ({row.where()})"


def segment_labels(row: AVERow, *, num_seconds: int = NUM_SECONDS) -> torch.Tensor:
    """Per-second class ids of a row: its category where ``Start <= t < End``, else background (28).

    Returns:
        ``(num_seconds,)`` int64; the ``0&0`` row gives all background.
    """
    try:
        index = category_index(row.category)
    except ValueError as err:
        raise ValueError(f"{row.where()}: {err}") from None
    labels = torch.full((num_seconds,), BACKGROUND_INDEX, dtype=torch.int64)  # (10,)
    labels[row.start : row.end] = index
    return labels


# ---------------------------------------------------------------------------------------------- layout
def frame_path(root: str | Path, video_id: str, t: int) -> Path:
    """``root/frames/<video_id>/<t>.jpg``: the frame nearest the centre of second t (t = 0..9)."""
    return Path(root) / FRAMES_DIR / video_id / f"{t}.jpg"


def audio_path(root: str | Path, video_id: str) -> Path:
    """``root/audio/<video_id>.wav``: 16 kHz mono."""
    return Path(root) / AUDIO_DIR / f"{video_id}.wav"


def missing_prepared(root: str | Path, video_id: str, *, num_seconds: int = NUM_SECONDS) -> Path | None:
    """The first missing prepared file of a video (frames, then audio), or ``None`` when all exist."""
    for t in range(num_seconds):
        p = frame_path(root, video_id, t)
        if not os.path.isfile(p):
            return p
    wav = audio_path(root, video_id)
    return None if os.path.isfile(wav) else wav


# ------------------------------------------------------------------------------------------------ loading
def _load_frame(path: Path, size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB, resized bilinearly (aspect not kept, as the official AVE pipelines)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


class AVEDataset(Dataset):
    """The rows of one split; ``__getitem__`` returns a sample dict or ``None`` for an unreadable video.

    Args:
        root: the prepared AVE folder.
        rows: the annotation rows (one sample each).
        image_size: side S of the square frames.
        mean: per-channel image mean (0-1 scale).
        std: per-channel image std.
        audio_target_frames: fbank frames T per 1-s clip with ``interpolate``.
        audio_mean: fbank normalisation mean.
        audio_std: fbank normalisation std.
        augment: random horizontal flip of all ten frames of a sample together.
        name: a label for log messages (e.g. ``ave/train``).
        audio_input: ``interpolate`` or ``pad`` (1024 frames; :func:`cola.data.audio.audio_clip_features`).
        audio_clip_seconds: length of each audio clip.
        audio_windows: clip placement ``seconds`` | ``official`` | ``None`` (follows ``audio_input``).
    """

    def __init__(
        self,
        root: str | Path,
        rows: Sequence[AVERow],
        *,
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        audio_target_frames: int = 100,
        audio_mean: float = AUDIOSET_MEAN,
        audio_std: float = AUDIOSET_STD,
        augment: bool = False,
        name: str = "ave",
        audio_input: str = "interpolate",
        audio_clip_seconds: float = 1.0,
        audio_windows: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.rows = list(rows)
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
        # rows skipped at load time ("video_id line N" -> reason); each DataLoader worker holds its own copy
        self.skipped: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int) -> dict[str, Any]:
        """Loads row ``index``; raises on unreadable files (``__getitem__`` catches and skips)."""
        row = self.rows[index]
        s = self.image_size
        paths = [frame_path(self.root, row.video_id, t) for t in range(NUM_SECONDS)]
        # per-pixel work in numpy: many tiny torch ops are slow when intra-op threads contend for cores
        frames = np.stack([_load_frame(p, s) for p in paths]).astype(np.float32) / 255.0  # (10, S, S, 3)
        frames = (frames - self.mean) / self.std
        if self.augment and torch.rand(()) < 0.5:  # torch's RNG: seeded per worker by Lightning
            frames = frames[:, :, ::-1]
        pixel_values = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))  # (10, 3, S, S)
        waveform = load_audio(audio_path(self.root, row.video_id))  # (num_samples,) 16 kHz mono
        input_values = audio_clip_features(
            waveform,
            seconds=NUM_SECONDS,
            target_frames=self.audio_target_frames,
            mean=self.audio_mean,
            std=self.audio_std,
            audio_input=self.audio_input,
            clip_seconds=self.audio_clip_seconds,
            windows=self.audio_windows,
        )  # (10, T, 128)
        return {
            "pixel_values": pixel_values,
            "input_values": input_values,
            "labels": segment_labels(row),  # (10,)
            "video_id": row.video_id,
        }

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self.load(index)
        except (OSError, ValueError, SyntaxError, EOFError) as err:  # PIL decode errors; AudioReadError is a ValueError
            row = self.rows[index]
            self.skipped[row_key(row)] = f"{type(err).__name__}: {err}"
            log.warning(
                "%s: skipping video %r, a prepared file could not be read (%s: %s); %d sample(s) skipped so far",
                self.name,
                row.video_id,
                type(err).__name__,
                err,
                len(self.skipped),
            )
            return None


def collate_ave(samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Stacks samples, dropping the ``None`` of unreadable videos; ``None`` when nothing is left."""
    samples = [s for s in samples if s is not None]
    if not samples:
        return None
    batch: dict[str, Any] = {
        key: torch.stack([s[key] for s in samples]) for key in ("pixel_values", "input_values", "labels")
    }
    batch["video_id"] = [s["video_id"] for s in samples]
    return batch


# --------------------------------------------------------------------------------------------- datamodule
class AVEDataModule(SplitDataModule):
    """AVE from the prepared release layout under ``root`` (see the module docstring).

    Args:
        root: the ``AVE_Dataset`` folder (with ``frames/`` and ``audio/`` from ``scripts/prepare_ave.py``).
        batch_size: training batch size (official: 2).
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        image_size: side S of the frames fed to the model.
        mean: image normalisation mean (default ImageNet).
        std: image normalisation std.
        audio_target_frames: fbank frames per clip with ``audio_input='interpolate'`` (then the AST
            ``max_length``); at least the clip's frames (98 for 1 s).
        audio_mean: fbank normalisation mean (default AST's AudioSet value).
        audio_std: fbank normalisation std.
        select_on: split the validation loader runs on: ``val`` (default) or ``test`` (what the official code
            selects checkpoints on).
        limit_per_split: keep only the first N rows of each split (quick runs).
        augment: random horizontal flips of training samples.
        audio_input: ``interpolate`` (default: each clip's fbank padded to ``audio_target_frames``, the AST's
            positional grid interpolated to it) or ``pad`` (official: normalised fbank zero-padded to 1024
            frames, the pretrained grid untouched); see :mod:`cola.data.audio`.
        audio_clip_seconds: length of each of the 10 audio clips (official: 1.0).
        audio_windows: clip placement: ``seconds`` (clip t = second t), ``official`` (spread with a 0.1 s end
            margin, as the official loader) or ``None`` (official with pad, seconds with interpolate).

    Attributes:
        audio_frames: fbank frames T per clip of the batches (the AST ``max_length`` these need).
        val_split: the split of the validation loader (``select_on``).
        test_splits: ``["test"]``.
        eval_splits: the distinct splits evaluated, validation first.
        rows: ``{split: [AVERow]}`` after :meth:`validate` (rows with missing files dropped).
        dropped: ``[(row, first missing path)]`` of the dropped rows.
    """

    collate_fn = staticmethod(collate_ave)

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
    ) -> None:
        super().__init__()
        check_audio_input(audio_input)
        self.audio_windows = resolve_windows(audio_windows, audio_input)
        if select_on not in SELECT_ON:
            raise ValueError(f"data.select_on must be one of {list(SELECT_ON)}, got {select_on!r}")
        for key, value in (
            ("batch_size", batch_size),
            ("image_size", image_size),
            ("audio_target_frames", audio_target_frames),
        ):
            if int(value) < 1:
                raise ValueError(f"data.{key} must be a positive integer, got {value!r}")
        if eval_batch_size is not None and int(eval_batch_size) < 1:
            raise ValueError(f"data.eval_batch_size must be a positive integer or null, got {eval_batch_size!r}")
        if limit_per_split is not None and int(limit_per_split) < 1:
            raise ValueError(f"data.limit_per_split must be a positive integer or null, got {limit_per_split!r}")
        if int(num_workers) < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers!r}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"data.mean and data.std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if float(audio_std) <= 0:
            raise ValueError(f"data.audio_std must be positive, got {audio_std!r}")
        self.audio_frames = check_audio_setting(audio_input, audio_clip_seconds, audio_target_frames)
        self.root = Path(root)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size) if eval_batch_size is not None else self.batch_size
        self.num_workers = int(num_workers)
        self.image_size = int(image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.audio_target_frames = int(audio_target_frames)
        self.audio_mean, self.audio_std = float(audio_mean), float(audio_std)
        self.audio_input, self.audio_clip_seconds = audio_input, float(audio_clip_seconds)
        self.select_on = select_on
        self.limit_per_split = None if limit_per_split is None else int(limit_per_split)
        self.augment = bool(augment)
        self.val_split = select_on
        self.test_splits = ["test"]
        self.eval_splits = list(dict.fromkeys([self.val_split, *self.test_splits]))
        self.num_classes = NUM_CLASSES
        self.class_names = CLASS_NAMES
        self.rows: dict[str, list[AVERow]] | None = None
        self.dropped: list[tuple[AVERow, Path]] = []
        self.datasets: dict[str, AVEDataset] = {}

    # -------------------------------------------------------------------------------------------- checks
    def _check_layout(self) -> None:
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

    def validate(self) -> None:
        """Checks the layout and the split files, then drops (with one warning) rows whose files are missing.

        Raises:
            FileNotFoundError: ``root`` or a split file is missing, or the release is not prepared (the
                message holds the preparation command).
            ValueError: a malformed or unknown-category row (naming file and line), or a split without a
                usable row.
        """
        if self.rows is not None:
            return
        self._check_layout()
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
        dropped_per_split = dict.fromkeys(SPLITS, 0)
        for split in SPLITS:
            for row in rows[split]:
                if row.video_id not in missing_cache:
                    missing_cache[row.video_id] = missing_prepared(self.root, row.video_id)
                missing = missing_cache[row.video_id]
                if missing is None:
                    kept[split].append(row)
                else:
                    dropped.append((row, missing))
                    dropped_per_split[split] += 1
        total = sum(len(v) for v in rows.values())
        if dropped:
            listed = "; ".join(f"{r.video_id} ({r.where()}: missing {p})" for r, p in dropped[:MAX_LISTED])
            more = f"; and {len(dropped) - MAX_LISTED} more" if len(dropped) > MAX_LISTED else ""
            report = self.root / PREPARE_REPORT
            note = (
                f"see {report} for videos that could not be decoded"
                if report.is_file()
                else f"{report} is missing: preparation may not have finished; rerun `{prepare_command(self.root)}`"
            )
            log.warning(
                "AVE: dropped %d of %d split rows whose prepared frames/audio are missing (%s): %s%s",
                len(dropped),
                total,
                note,
                listed,
                more,
            )
        for split in dict.fromkeys(["train", *self.eval_splits]):
            if not kept[split]:
                raise ValueError(
                    f"AVE: no usable row in split {split!r} ({self.root / SPLIT_FILES[split]}: "
                    f"{len(rows[split])} rows, {dropped_per_split[split]} dropped for missing prepared files)"
                )
        if self.limit_per_split is not None:
            kept = {s: v[: self.limit_per_split] for s, v in kept.items()}
        self.rows, self.dropped = kept, dropped
        log.info("AVE: %s rows (train/val/test), %d dropped", "/".join(str(len(kept[s])) for s in SPLITS), len(dropped))

    @property
    def num_dropped(self) -> int:
        """Split rows dropped because their prepared files were missing."""
        return len(self.dropped)

    @property
    def num_skipped(self) -> int:
        """Distinct rows skipped at load time because a file could not be decoded (counted in this process).

        A row counts once however many passes (validation every epoch, the final validation and test) skipped it.
        """
        return len({key for d in self.datasets.values() for key in d.skipped})

    def floor_metrics(self) -> dict[str, float]:
        """The floor a model must clear: ``acc`` of always predicting the training split's most frequent class.

        The class is counted over every second of the training rows (background included; ties go to the lower
        class id) and scored on every second of each evaluated split (:attr:`eval_splits`), leaving out the rows
        skipped at load time as the model's evaluation does. Reads the annotations only.

        Returns:
            ``{"<split>/acc_majority": accuracy}`` per evaluated split (a split whose rows were all skipped has
            no entry).
        """
        self.validate()
        assert self.rows is not None
        counts = torch.zeros(NUM_CLASSES, dtype=torch.int64)  # (29,)
        for row in self.rows["train"]:
            counts += torch.bincount(segment_labels(row), minlength=NUM_CLASSES)
        majority = int(counts.argmax())  # the first maximum: the lower class id on a tie
        out: dict[str, float] = {}
        for split in self.eval_splits:
            skipped = self.datasets[split].skipped if split in self.datasets else {}
            rows = [r for r in self.rows[split] if row_key(r) not in skipped]
            if rows:
                labels = torch.stack([segment_labels(r) for r in rows])  # (N, 10)
                out[f"{split}/acc_majority"] = float((labels == majority).double().mean())
        return out

    # ------------------------------------------------------------------------------------------ datasets
    def dataset(self, split: str) -> AVEDataset:
        """The dataset of ``split`` (built on first use)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if split not in self.datasets:
            self.validate()
            assert self.rows is not None
            self.datasets[split] = AVEDataset(
                self.root,
                self.rows[split],
                image_size=self.image_size,
                mean=self.mean,
                std=self.std,
                audio_target_frames=self.audio_target_frames,
                audio_mean=self.audio_mean,
                audio_std=self.audio_std,
                augment=self.augment and split == "train",
                name=f"ave/{split}",
                audio_input=self.audio_input,
                audio_clip_seconds=self.audio_clip_seconds,
                audio_windows=self.audio_windows,
            )
        return self.datasets[split]
