"""The W&B logger of a run folder: its run id is kept in the folder, so a resumed run logs into the same W&B run."""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger

from cola.io import atomic_write_text


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: read from ``wandb_id.txt``, or made and written there on first use."""
    path = Path(run_dir) / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id shape
    atomic_write_text(path, run_id + "\n")
    return run_id


def run_folder_wandb_logger(
    *,
    save_dir: str | os.PathLike,
    run_tags: Sequence[str] = (),
    tags: Sequence[str] = (),
    extra_tags: Sequence[str] = (),
    **kwargs: Any,
) -> WandbLogger:
    """A :class:`~lightning.pytorch.loggers.WandbLogger` that resumes the W&B run of its run folder.

    Args:
        save_dir: the run folder (W&B's offline files go to ``<save_dir>/wandb``; the id to ``wandb_id.txt``).
        run_tags: tags describing the run's setting (method, rank, ...).
        tags: more tags (``logger.wandb.tags``).
        extra_tags: more tags (the top-level ``tags``).
        **kwargs: the other :class:`WandbLogger` arguments (``project``, ``group``, ``offline``, ``config`` ...).
    """
    return WandbLogger(
        id=wandb_run_id(Path(save_dir)),  # kept in the run folder: a resumed run continues the same W&B run
        resume="allow",
        save_dir=str(save_dir),
        tags=[*run_tags, *tags, *extra_tags],
        **kwargs,
    )
