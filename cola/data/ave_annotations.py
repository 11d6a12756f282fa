"""The AVE annotation files (``Category&VideoID&Quality&Start&End`` per line; docs/data.md#ave) and the label
space: 28 events in the order of first appearance in the release's ``Annotations.txt`` + background = 29 classes.
One sample is one annotation row; second t is labelled with the row's category when ``Start <= t < End``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "AVE_CATEGORIES",
    "BACKGROUND",
    "BACKGROUND_INDEX",
    "CLASS_NAMES",
    "HEADER",
    "NUM_CLASSES",
    "NUM_SECONDS",
    "SPLIT_FILES",
    "AVERow",
    "category_index",
    "category_order",
    "parse_annotations",
    "row_key",
    "segment_labels",
]

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
SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


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
