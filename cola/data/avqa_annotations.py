"""The MUSIC-AVQA question files (``avqa-{train,val,test}.json``; docs/data.md#music-avqa): parsing, question
templating, the answer vocabulary and the nine question types.

Verified against the official repository (GeWu-Lab/MUSIC-AVQA, ``data/json/avqa-val.json`` and
``avqa-test.json``, and its loader ``net_grd_avst/dataloader_avst.py``): each file is a JSON list of objects
with the fields ``video_id`` (a string: ``"00000093"``, ``"sa00007434"``), ``question_id`` (an int),
``type`` (a *string* holding a two-item list, ``"[\\"Audio\\", \\"Counting\\"]"``), ``question_content`` (a
template such as ``"Is the <Object> on the <LR> louder than the <Object> on the <LR>?"``), ``templ_values``
(a string holding a list, ``"[\\"cello\\", \\"left\\", \\"piano\\", \\"right\\"]"``, one value per
placeholder, in order), ``question_deleted`` (always 0 in the release; read, not used, as the official code)
and ``anser`` (sic: the answer word). Quirks of the release kept here: some questions end with a full-width
``？`` or a trailing space; instrument names hold underscores (``acoustic_guitar``); a few ``question_id`` s
appear twice in one file with different answers (27 in val, 55 in test; the repository's later
``data/json_update/`` files drop them) and, as in the official loader, every entry is its own sample.

Templating follows the official loader: the question is split on single spaces after ``rstrip``, its last
character (the question mark) is dropped, and every word that contains ``<`` is *replaced* by the next
template value. Deviation (for a WordPiece tokenizer rather than the official word vocabulary): the trailing
``?``/``？`` is dropped only when present (official drops the last character unconditionally, which is the
same on the release) and underscores in the filled text become spaces (``acoustic guitar``).

Answers: the vocabulary is the train file's distinct answers in order of first appearance (the official
``ans_vocab``; 42 on the release; val and test use 41 of them). Question types: the nine (modality, type)
pairs of :data:`QUESTION_TYPES`, in the order the official evaluation prints them.
"""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.avqa_types import MODALITIES, NUM_TYPES, QUESTION_TYPES, TYPE_KEYS

__all__ = [
    "FIELDS",
    "MODALITIES",
    "NUM_TYPES",
    "QUESTION_TYPES",
    "SPLIT_FILES",
    "TYPE_KEYS",
    "AVQAQuestion",
    "answer_vocabulary",
    "fill_template",
    "majority_answers",
    "parse_questions",
    "question_words",
    "type_index",
]

SPLIT_FILES = {"train": "avqa-train.json", "val": "avqa-val.json", "test": "avqa-test.json"}
FIELDS = ("video_id", "question_id", "type", "question_content", "templ_values", "anser")
PLACEHOLDER = re.compile(r"<[^<>]*>")


@dataclass(frozen=True)
class AVQAQuestion:
    """One entry of a question file.

    Attributes:
        video_id: the video (file stem of ``<video_id>.mp4``).
        question_id: the release's id (not unique: see the module docstring).
        type_index: index into :data:`QUESTION_TYPES` (and :data:`TYPE_KEYS`).
        content: the template, as written.
        templ_values: the template values, in placeholder order.
        answer: the answer word (``anser`` in the file).
        source: the file it was read from.
        index: its position in that file's list (0-based), unique within the file.
    """

    video_id: str
    question_id: int
    type_index: int
    content: str
    templ_values: tuple[str, ...]
    answer: str
    source: str = ""
    index: int = 0

    @property
    def type_key(self) -> str:
        """``audio_counting``, ``audiovisual_temporal``, ..."""
        return TYPE_KEYS[self.type_index]

    @property
    def text(self) -> str:
        """The filled question as the tokenizer reads it (see :func:`fill_template`)."""
        return fill_template(self.content, self.templ_values)

    def where(self) -> str:
        """``file, entry N (question_id Q)`` for messages."""
        return f"{self.source}, entry {self.index} (question_id {self.question_id})"


def type_index(modality: str, qtype: str) -> int:
    """The index of a release (modality, type) pair in :data:`QUESTION_TYPES`.

    Raises:
        ValueError: an unknown pair (the message lists the known ones).
    """
    try:
        return QUESTION_TYPES.index((modality, qtype))
    except ValueError:
        known = [list(t) for t in QUESTION_TYPES]
        raise ValueError(f"unknown question type {[modality, qtype]}; expected one of {known}") from None


def question_words(content: str, values: Sequence[str]) -> list[str]:
    """The official templating: split on spaces, drop the trailing ``?``/``？``, replace each word holding ``<``.

    Raises:
        ValueError: the number of placeholder words differs from the number of values.
    """
    words = content.rstrip().split(" ")
    if words[-1].endswith(("?", "？")):
        words[-1] = words[-1][:-1]
    slots = [i for i, w in enumerate(words) if "<" in w]
    if len(slots) != len(values):
        raise ValueError(
            f"question {content!r} has {len(slots)} placeholder(s) but templ_values has {len(values)}: {list(values)}"
        )
    for i, value in zip(slots, values, strict=True):
        words[i] = value
    return words


def fill_template(content: str, values: Sequence[str]) -> str:
    """The filled question text for a WordPiece tokenizer: the official words, underscores as spaces."""
    return " ".join(question_words(content, values)).replace("_", " ")


def _string_list(value: Any, field: str) -> list[str]:
    """A list of strings from the release's string-encoded list (``"[\\"a\\", \\"b\\"]"``) or a plain list."""
    parsed = value
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value)  # as the official loader (JSON lists are Python literals too)
        except (ValueError, SyntaxError):
            parsed = None
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(v, str) for v in parsed):
        raise ValueError(f"{field} must be a list of strings (the release writes it as a string), got {value!r}")
    return list(parsed)


def _question(entry: Any, source: str, index: int) -> AVQAQuestion:
    where = f"{source}, entry {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with the fields {list(FIELDS)}, got {type(entry).__name__}")
    missing = [f for f in FIELDS if f not in entry]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}; expected {list(FIELDS)} (the answer field is 'anser')")
    where += f" (question_id {entry['question_id']!r})"
    video_id, qid, answer = entry["video_id"], entry["question_id"], entry["anser"]
    if not isinstance(video_id, str) or not video_id:
        raise ValueError(f"{where}: video_id must be a non-empty string, got {video_id!r}")
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise ValueError(f"{where}: question_id must be an integer, got {qid!r}")
    if not isinstance(answer, str) or not answer:
        raise ValueError(f"{where}: anser must be a non-empty string, got {answer!r}")
    content = entry["question_content"]
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{where}: question_content must be a non-empty string, got {content!r}")
    try:
        qtype = _string_list(entry["type"], "type")
        if len(qtype) != 2:
            raise ValueError(f"type must hold [modality, type], got {entry['type']!r}")
        values = _string_list(entry["templ_values"], "templ_values")
        question_words(content, values)
        t = type_index(*qtype)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return AVQAQuestion(video_id, qid, t, content, tuple(values), answer, source, index)


def parse_questions(path: str | Path) -> list[AVQAQuestion]:
    """Reads one question file (a JSON list of question objects; see the module docstring).

    Returns:
        The questions in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid JSON or not a list, or an entry is malformed (naming the file, the
            entry, its ``question_id``, the field and the value).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MUSIC-AVQA question file {path} not found")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of questions, got {type(entries).__name__}")
    return [_question(entry, str(path), i) for i, entry in enumerate(entries)]


def answer_vocabulary(questions: Iterable[AVQAQuestion]) -> list[str]:
    """The distinct answers in order of first appearance (the official ``ans_vocab`` over the train file)."""
    return list(dict.fromkeys(q.answer for q in questions))


def majority_answers(questions: Iterable[AVQAQuestion]) -> dict[int, str]:
    """The most frequent answer of each question type (ties: the answer seen first), ``{type_index: answer}``."""
    counts: dict[int, Counter] = {}
    for q in questions:
        counts.setdefault(q.type_index, Counter())[q.answer] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}
