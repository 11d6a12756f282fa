"""Atomic file writes: a crash mid-write leaves the previous good file, never a half-written one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    return _atomic_replace(Path(path), lambda f: f.write(text.encode()))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes ``*.ckpt`` to a temporary name and renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        _atomic_replace(Path(path), lambda f: torch.save(checkpoint, f))
