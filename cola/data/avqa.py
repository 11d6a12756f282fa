"""MUSIC-AVQA (Li et al., CVPR 2022): audio-visual question answering over musical performances.

One sample is one entry of a question file (docs/data.md#music-avqa): a video, a templated question and its
answer word, classified over the answer vocabulary (the train file's distinct answers, 42 on the release; the
files, templating and types are read by :mod:`cola.data.avqa_annotations`).

Layout under ``root`` (after ``python scripts/prepare_avqa.py ROOT``)::

    avqa-train.json avqa-val.json avqa-test.json     the release's question files
    MUSIC-AVQA-videos-Real/<video_id>.mp4            the release videos (~60 s; read only by the preparation):
    MUCIS-AVQA-videos-Synthetic/<video_id>.mp4       the real ones and the synthetic ones, whose folder the release
                                                     misspells (sic); see :data:`VIDEO_DIRS` for the alternatives
    frames/<video_id>/<t>.jpg                        t = 0..S-1: the frame nearest the centre of second t
    audio/<video_id>.wav                             16 kHz mono, S seconds
    prepare_report.json                              the preparation's report; its ``seconds`` is S (60)

Segments: per video the official code uses the 1-s segments ``0, 6, ..., 54`` of 60 (``feature[::6]``, ten);
here ``data.num_segments`` (T) one-second segments start at seconds ``(i * S) // T``, i = 0..T-1, which is
exactly that for T = 10 and S = 60. ``null`` (the task file's default) takes min(10, S): ten on the release,
every second of the short synthetic videos. Each segment is the frame of second t and the 1-s audio clip
``[t, t + 1)`` (the official VGGish features are per second too).

Batches (dict): ``pixel_values (B, T, 3, S, S)``, ``input_values (B, T, F, 128)`` (Kaldi fbank per second,
:func:`cola.data.audio.audio_clip_features`), ``input_ids``, ``attention_mask`` (B, L) (BERT uncased
WordPiece, ``[CLS] ... [SEP]``, the tokenizer of :func:`cola.data.refcoco.load_tokenizer`), ``labels`` (B,)
answer indices (-1 for a val/test answer absent from the train vocabulary: always counted wrong),
``question_type`` (B,) indices into :data:`QUESTION_TYPES`, ``video_id`` and ``question_id`` lists.

Robustness (as AVE): the layout and every question file are checked before any long work (an unprepared root
stops with the preparation command); questions whose video has no prepared frames or audio are dropped with one
warning; a file that exists but cannot be decoded is skipped at load time with a warning and counted. No
augmentation: a horizontal flip would change the answer of every left/right question.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cola.data.audio import SAMPLE_RATE
from cola.data.av import AVDataModule, AVDataset, collate_samples, to_chw
from cola.data.ave import AUDIO_DIR, FRAMES_DIR, PREPARE_REPORT, audio_path, frame_path
from cola.data.avqa_annotations import (
    NUM_TYPES,
    QUESTION_TYPES,
    SPLIT_FILES,
    TYPE_KEYS,
    AVQAQuestion,
    answer_vocabulary,
    majority_answers,
    parse_questions,
)
from cola.data.base import check_int
from cola.data.refcoco import PAD_MODES, load_tokenizer
from cola.dicts import check_choice

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SEGMENTS",
    "NUM_TYPES",
    "QUESTION_TYPES",
    "TYPE_KEYS",
    "REAL_VIDEO_DIR",
    "SINGLE_VIDEO_DIR",
    "SYNTHETIC_VIDEO_DIR",
    "SYNTHETIC_VIDEO_DIR_CORRECTED",
    "VIDEO_DIRS",
    "AVQADataModule",
    "AVQADataset",
    "collate_avqa",
    "prepare_command",
    "segment_seconds",
]

REAL_VIDEO_DIR = "MUSIC-AVQA-videos-Real"
"""The release's folder of real videos (8-digit numeric ids, e.g. ``00000093``)."""
SYNTHETIC_VIDEO_DIR = "MUCIS-AVQA-videos-Synthetic"
"""The release's folder of synthetic videos (prefixed ids, e.g. ``sa00007434``), named as the release unpacks it:
misspelt ``MUCIS`` (sic)."""
SYNTHETIC_VIDEO_DIR_CORRECTED = "MUSIC-AVQA-videos-Synthetic"
"""Also accepted for the synthetic videos: the folder name spelt correctly."""
SINGLE_VIDEO_DIR = "MUSIC-AVQA-Videos"
"""Also accepted instead of the two folders: one folder holding every video (what the official README suggests)."""
VIDEO_DIRS = (REAL_VIDEO_DIR, SYNTHETIC_VIDEO_DIR, SYNTHETIC_VIDEO_DIR_CORRECTED, SINGLE_VIDEO_DIR)
"""Every folder the preparation reads videos from, in this order (each one present is read; an id may be in one)."""
DEFAULT_SEGMENTS = 10  # official: 10 of the 60 one-second segments
STACKED = ("pixel_values", "input_values", "input_ids", "attention_mask", "labels", "question_type")


def prepare_command(root: str | Path) -> str:
    """The command that turns the release at ``root`` into frames and wavs."""
    return f"python scripts/prepare_avqa.py {shlex.quote(str(root))}"


def segment_seconds(video_seconds: int, num_segments: int) -> list[int]:
    """The seconds ``(i * S) // T`` (i = 0..T-1) a video of S seconds is sampled at: official ``[::6]`` for 10 of 60."""
    return [(i * video_seconds) // num_segments for i in range(num_segments)]


def select_seconds(waveform: torch.Tensor, seconds: Sequence[int]) -> torch.Tensor:
    """The 1-s pieces ``[t, t + 1)`` of a (N,) 16 kHz waveform, concatenated (zeros past its end)."""
    end = (max(seconds) + 1) * SAMPLE_RATE
    if waveform.shape[0] < end:
        waveform = torch.nn.functional.pad(waveform, (0, end - waveform.shape[0]))
    return torch.cat([waveform[t * SAMPLE_RATE : (t + 1) * SAMPLE_RATE] for t in seconds])  # (T * 16000,)


class AVQADataset(AVDataset):
    """The questions of one split; see :class:`cola.data.av.AVDataset` for the image and audio arguments.

    Args:
        root: the prepared MUSIC-AVQA folder.
        questions: the questions.
        answers: the answer vocabulary (index = label).
        seconds: the video seconds sampled as segments.
        tokenizer: a Hugging Face BERT tokenizer (callable).
        max_question_len: token length L (``[CLS] ... [SEP]`` + padding; longer questions are truncated).
        **kwargs: ``inputs`` (the image and audio settings), ``augment`` of :class:`cola.data.av.AVDataset`.
    """

    unit = "question"

    def __init__(
        self,
        root: str | Path,
        questions: Sequence[AVQAQuestion],
        *,
        answers: Sequence[str],
        seconds: Sequence[int],
        tokenizer: Any,
        max_question_len: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{"name": "avqa", **kwargs})
        self.root = Path(root)
        self.questions = list(questions)
        self.label_of = {a: i for i, a in enumerate(answers)}
        self.seconds = list(seconds)
        self.tokenizer = tokenizer
        self.max_question_len = int(max_question_len)

    def __len__(self) -> int:
        return len(self.questions)

    def skip_key(self, index: int) -> tuple[str, str]:
        q = self.questions[index]
        return str(q.index), f"{q.question_id} (video {q.video_id})"

    def load(self, index: int) -> dict[str, Any]:
        """Loads question ``index``; raises on unreadable files (``__getitem__`` catches and skips)."""
        q = self.questions[index]
        frames = self.frames([frame_path(self.root, q.video_id, t) for t in self.seconds])  # (T, S, S, 3)
        waveform = select_seconds(self.waveform(audio_path(self.root, q.video_id)), self.seconds)  # (T * 16000,)
        tokens = self.tokenizer(
            q.text, max_length=self.max_question_len, padding="max_length", truncation=True, return_tensors="pt"
        )
        return {
            "pixel_values": to_chw(frames),  # (T, 3, S, S)
            "input_values": self.audio_features(waveform, len(self.seconds)),  # (T, F, 128)
            "input_ids": tokens["input_ids"][0].long(),  # (L,)
            "attention_mask": tokens["attention_mask"][0].long(),  # (L,)
            "labels": torch.tensor(self.label_of.get(q.answer, -1), dtype=torch.int64),
            "question_type": torch.tensor(q.type_index, dtype=torch.int64),
            "video_id": q.video_id,
            "question_id": q.question_id,
        }


def collate_avqa(samples: list[dict[str, Any] | None], *, pad_to: str = "longest") -> dict[str, Any] | None:
    """Stacks AVQA samples, dropping the ``None`` of unreadable ones (``None`` when nothing is left); with
    ``pad_to="longest"`` the token positions past the batch's longest question are cut (padding is on the right)."""
    samples = [s for s in samples if s is not None]
    batch = collate_samples(samples, keys=STACKED)
    if batch is None:
        return None
    batch["question_id"] = [s["question_id"] for s in samples]
    if pad_to == "longest":
        length = max(1, int(batch["attention_mask"].sum(1).max()))
        batch["input_ids"], batch["attention_mask"] = (
            batch["input_ids"][:, :length],
            batch["attention_mask"][:, :length],
        )
    return batch


def _collate_longest(samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    return collate_avqa(samples, pad_to="longest")


def _collate_max_length(samples: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    return collate_avqa(samples, pad_to="max_length")


class AVQADataModule(AVDataModule):
    """MUSIC-AVQA from the prepared release layout under ``root`` (see the module docstring).

    Args:
        root: the folder holding the question files and ``frames/``, ``audio/`` from ``scripts/prepare_avqa.py``.
        tokenizer: Hugging Face tokenizer name or local folder (BERT uncased WordPiece; ``model.tokenizer``).
        max_question_len: token length L of the questions incl. ``[CLS]``/``[SEP]`` (the longest question of
            the release's val and test files is 20 WordPiece tokens with them; official: 14 words).
        pad_to: ``longest`` (cut each batch to its longest question) or ``max_length`` (always L positions).
        num_segments: T one-second segments per video (``None``: min(10, S), the official ten on the release).
        video_seconds: S seconds prepared per video (``None``: the ``seconds`` of ``prepare_report.json``).
        num_answers: outputs of the answer classifier (42 on the release); the train vocabulary must fit.
        **kwargs: batch sizes, workers, image and audio settings, ``select_on``, ``limit_per_split`` of
            :class:`cola.data.av.AVDataModule` (``augment`` must stay false; clips are 1 s at their second).

    Attributes:
        answers: the answer vocabulary (after :meth:`validate`). seconds: the sampled seconds.
        index: ``{split: [AVQAQuestion]}`` (questions with missing files dropped); dropped: ``[(question, path)]``.
    """

    label = "MUSIC-AVQA"
    unit = "question"
    units = "questions"

    def __init__(
        self,
        *,
        root: str | Path,
        tokenizer: str = "bert-base-uncased",
        max_question_len: int = 32,
        pad_to: str = "longest",
        num_segments: int | None = None,
        video_seconds: int | None = None,
        num_answers: int = 42,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("augment"):
            raise ValueError("data.augment must be false for MUSIC-AVQA: a flip changes every left/right answer")
        if kwargs.get("audio_windows") not in (None, "seconds"):
            raise ValueError(
                f"data.audio_windows must be seconds or null for MUSIC-AVQA, got {kwargs['audio_windows']!r}"
            )
        if float(kwargs.get("audio_clip_seconds", 1.0)) != 1.0:
            raise ValueError(
                f"data.audio_clip_seconds must be 1.0 for MUSIC-AVQA, got {kwargs['audio_clip_seconds']!r}"
            )
        check_choice("data.pad_to", pad_to, PAD_MODES)
        super().__init__(root=root, **{**kwargs, "audio_windows": "seconds"})
        if check_int("max_question_len", max_question_len) < 3:
            raise ValueError(f"data.max_question_len must be >= 3 ([CLS] token [SEP]), got {max_question_len}")
        self.num_segments = check_int("num_segments", num_segments, optional=True)
        self.video_seconds = check_int("video_seconds", video_seconds, optional=True)
        self.num_answers = check_int("num_answers", num_answers, minimum=2)
        self.tokenizer_name, self.max_question_len, self.pad_to = str(tokenizer), int(max_question_len), pad_to
        self._tokenizer: Any = None
        self.answers: list[str] = []
        self.seconds: list[int] = []

    def collate(self):
        return _collate_longest if self.pad_to == "longest" else _collate_max_length

    # -------------------------------------------------------------------------------------------- checks
    def check_layout(self) -> None:
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(
                f"MUSIC-AVQA data.root={root} does not exist; expected the folder holding avqa-train.json, "
                f"avqa-val.json, avqa-test.json and the videos, prepared with `{prepare_command(root)}`"
            )
        problems = [f"missing question file {root / f}" for f in SPLIT_FILES.values() if not (root / f).is_file()]
        unprepared = [d for d in (FRAMES_DIR, AUDIO_DIR) if not (root / d).is_dir()]
        if self.video_seconds is None and not (root / PREPARE_REPORT).is_file():
            unprepared.append(PREPARE_REPORT)
        if unprepared:
            videos = [d for d in VIDEO_DIRS if (root / d).is_dir()]
            problems.append(
                f"{root} has {'the videos (' + ', '.join(videos) + ')' if videos else 'no video folder'} but not the "
                f"prepared {', '.join(unprepared)}; prepare it once (resumable) with:\n    {prepare_command(root)}"
            )
        if problems:
            raise FileNotFoundError(
                f"MUSIC-AVQA data at data.root={root} is incomplete:\n  " + "\n  ".join(problems) + "\nexpected "
                f"layout: avqa-{{train,val,test}}.json, {REAL_VIDEO_DIR}/<id>.mp4 and {SYNTHETIC_VIDEO_DIR}/<id>.mp4 "
                f"(sic), frames/<id>/<t>.jpg, audio/<id>.wav, {PREPARE_REPORT} (docs/data.md#music-avqa)"
            )

    def _resolve_seconds(self) -> list[int]:
        """The sampled seconds from ``video_seconds`` (or the preparation report) and ``num_segments``."""
        seconds = self.video_seconds
        if seconds is None:
            report = self.root / PREPARE_REPORT
            try:
                seconds = int(json.loads(report.read_text())["seconds"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(
                    f"{report} has no valid 'seconds' ({type(e).__name__}: {e}); rerun `{prepare_command(self.root)}` "
                    "or set data.video_seconds"
                ) from None
        count = min(DEFAULT_SEGMENTS, seconds) if self.num_segments is None else self.num_segments
        if count > seconds:
            raise ValueError(
                f"data.num_segments={count} exceeds the {seconds} prepared seconds per video (data.video_seconds "
                "or prepare_report.json); use at most that many segments"
            )
        return segment_seconds(seconds, count)

    def _missing(self, video_id: str) -> Path | None:
        """The first missing prepared file of a video (sampled frames, then the wav), or ``None``."""
        for t in self.seconds:
            if not os.path.isfile(p := frame_path(self.root, video_id, t)):
                return p
        wav = audio_path(self.root, video_id)
        return None if os.path.isfile(wav) else wav

    def read_index(self) -> tuple[dict[str, list[AVQAQuestion]], list[tuple[AVQAQuestion, Path]], dict[str, int]]:
        """The questions of each file whose video is prepared, the dropped ones and the question counts.

        Raises:
            ValueError: a malformed question file (naming file, entry and field), too many train answers for
                ``num_answers``, or more segments than prepared seconds.
        """
        questions = {s: parse_questions(self.root / f) for s, f in SPLIT_FILES.items()}
        self.answers = answer_vocabulary(questions["train"])
        if len(self.answers) > self.num_answers:
            raise ValueError(
                f"{self.root / SPLIT_FILES['train']} has {len(self.answers)} distinct answers but data.num_answers="
                f"{self.num_answers} (the classifier's outputs); set data.num_answers >= {len(self.answers)}"
            )
        unknown = sum(q.answer not in self.answers for s in ("val", "test") for q in questions[s])
        if unknown:
            log.warning(
                "MUSIC-AVQA: %d val/test question(s) have an answer the train file lacks; counted wrong", unknown
            )
        self.seconds = self._resolve_seconds()
        cache: dict[str, Path | None] = {}
        kept: dict[str, list[AVQAQuestion]] = {s: [] for s in SPLIT_FILES}
        dropped: list[tuple[AVQAQuestion, Path]] = []
        for split, qs in questions.items():
            for q in qs:
                if q.video_id not in cache:
                    cache[q.video_id] = self._missing(q.video_id)
                if cache[q.video_id] is None:
                    kept[split].append(q)
                else:
                    dropped.append((q, cache[q.video_id]))
        return kept, dropped, {s: len(v) for s, v in questions.items()}

    def describe_dropped(self, item: AVQAQuestion, missing: Path) -> str:
        return f"{item.video_id} ({item.where()}: missing {missing})"

    def dropped_note(self) -> str:
        return f" (prepared frames/audio; see {self.root / PREPARE_REPORT} for videos that could not be decoded)"

    def split_source(self, split: str) -> str:
        return str(self.root / SPLIT_FILES[split])

    def split_floor_metrics(self, split: str) -> dict[str, float]:
        """The floor a model must clear: ``acc`` of answering every question with the most frequent training answer
        of its type (ties: the answer seen first), over the questions of ``split`` not skipped at load time.

        Returns:
            ``{"<split>/acc_majority": accuracy}`` (``{}`` when every question of the split was skipped).
        """
        self.validate()
        assert self.index is not None
        majority = majority_answers(self.index["train"])
        skipped = {key for d in self.built(split) for key in d.skipped}
        questions = [q for q in self.index[split] if str(q.index) not in skipped]
        if not questions:
            return {}
        correct = sum(q.answer == majority.get(q.type_index) for q in questions)
        return {f"{split}/acc_majority": correct / len(questions)}

    # ------------------------------------------------------------------------------------------ datasets
    def build_dataset(self, split: str, *, train: bool) -> AVQADataset:
        assert self.index is not None
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return AVQADataset(
            self.root,
            self.index[split],
            answers=self.answers,
            seconds=self.seconds,
            tokenizer=self._tokenizer,
            max_question_len=self.max_question_len,
            name=f"avqa/{split}",
            **self.dataset_kwargs(split, train=train),
        )
