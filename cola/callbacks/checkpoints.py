"""Checkpoint files and model selection: ``*.ckpt`` written atomically (a crash mid-write keeps the previous good
one), and what an equal score does (``callbacks.model_checkpoint.select_ties``).

Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` and
:class:`~lightning.pytorch.callbacks.EarlyStopping` need a strict improvement (``torch.gt``/``torch.lt``): on an
equal score the earlier checkpoint stays best and the patience keeps counting, as the official grounding and AVS
code (``>``). The official AVE code compares with ``>=`` (``audio_visual/ave/CoLA/main_trans.py:357-359``): the
later checkpoint is saved and the patience starts again. The two subclasses here take ``select_ties``:
``earlier`` (Lightning's behaviour, unchanged) or ``later`` (an equal score counts as an improvement).

They keep Lightning's class names on purpose: a callback's checkpoint state is stored under its ``state_key``,
which begins with the class name, so checkpoints written with Lightning's classes resume with these and back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import callbacks as pl_callbacks

from cola.dicts import check_choice
from cola.peft.state import atomic_replace

SELECT_TIES = ("earlier", "later")  # callbacks.model_checkpoint.select_ties


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that writes ``*.ckpt`` to a temporary name and renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        atomic_replace(Path(path), lambda f: torch.save(checkpoint, f))


def check_select_ties(select_ties: str) -> str:
    """Returns ``select_ties`` when it is one of :data:`SELECT_TIES`.

    Raises:
        ValueError: another value (naming ``callbacks.model_checkpoint.select_ties``, the value and the choices).
    """
    return check_choice("callbacks.model_checkpoint.select_ties", select_ties, SELECT_TIES)


class ModelCheckpoint(pl_callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint whose top-k test can let an equal score in (``select_ties='later'``).

    With ``later`` a score equal to the k-th best replaces it: with ``save_top_k=1`` and a fixed file name
    (``best.ckpt``, no version counter) the file is written again in place (Lightning keeps a file whose path is
    the one just saved), and ``best_model_path`` names the newest of equally scored checkpoints.

    Args:
        select_ties: ``earlier`` (default: a strict improvement is needed, Lightning's behaviour) or ``later``.
        *args, **kwargs: :class:`lightning.pytorch.callbacks.ModelCheckpoint`'s.
    """

    def __init__(self, *args: Any, select_ties: str = "earlier", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.select_ties = check_select_ties(select_ties)

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        if super().check_monitor_top_k(trainer, current):
            return True
        if self.select_ties == "earlier" or current is None or self.save_top_k in (0, -1):
            return False
        # Lightning refused: only the strict comparison can have failed (fewer than k kept and top_k -1 pass above)
        tie = bool(torch.eq(current, self.best_k_models[self.kth_best_model_path]))
        return trainer.strategy.reduce_boolean_decision(tie)  # every process decides alike, as Lightning's test

    def _update_best_and_save(
        self, current: torch.Tensor, trainer, monitor_candidates: dict[str, torch.Tensor]
    ) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        if self.select_ties == "earlier" or len(self.best_k_models) < 2:
            return
        # Lightning picks the first of equal best scores, the oldest; the newest entry is the one just saved. The
        # file just written recorded the older path; last.ckpt, written after it, records this one.
        newest = next(reversed(self.best_k_models))
        if bool(torch.eq(self.best_k_models[newest], self.best_model_score)):
            self.best_model_path = newest


class EarlyStopping(pl_callbacks.EarlyStopping):
    """Lightning's EarlyStopping in which an equal score can reset the patience (``select_ties='later'``).

    With ``later``, a score equal to the best (after ``min_delta``, as Lightning's improvement test) resets
    ``wait_count`` to 0 instead of counting one more epoch without improvement. The stopping and divergence
    thresholds and the non-finite check are Lightning's, tested first. ``monitor_op`` stays Lightning's
    strict comparison: its ``__init__`` compares it with ``torch.gt`` to sign ``min_delta``.

    Args:
        select_ties: ``earlier`` (default: an equal score counts as no improvement, Lightning's behaviour) or
            ``later``.
        *args, **kwargs: :class:`lightning.pytorch.callbacks.EarlyStopping`'s.
    """

    def __init__(self, *args: Any, select_ties: str = "earlier", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.select_ties = check_select_ties(select_ties)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        tie = self.select_ties == "later" and bool(
            torch.eq(current - self.min_delta, self.best_score.to(current.device))
        )
        wait_count, stopping_reason = self.wait_count, self.stopping_reason
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if not tie or self.wait_count != wait_count + 1:  # no tie, or an earlier check (threshold, non-finite) ruled
            return should_stop, reason
        # Lightning counted the tie as no improvement; undo that and take it as the new best
        self.wait_count, self.stopping_reason, self.best_score = 0, stopping_reason, current
        return False, f"Metric {self.monitor} equals its best score {current:.3f} (select_ties=later): patience reset"
