"""Checkpoint files: written atomically (a crash mid-write keeps the previous good ``*.ckpt``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from cola.peft.state import atomic_replace


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes ``*.ckpt`` to a temporary name and renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        atomic_replace(Path(path), lambda f: torch.save(checkpoint, f))
