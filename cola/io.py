"""Atomic text writes (a crash mid-write leaves the previous good file, never a half-written one).

Checkpoint files are written the same way by :class:`cola.callbacks.checkpoints.AtomicCheckpointIO`."""

from __future__ import annotations

import os
from pathlib import Path

from cola.peft.state import atomic_replace


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    return atomic_replace(Path(path), lambda f: f.write(text.encode()))
