"""How far a run got, for ``job.json`` (:class:`cola.sweep.JobRecord`) and ``scripts/sweep_status.py``."""

from __future__ import annotations

import math
from typing import Any

import lightning as L


class JobProgress(L.Callback):
    """Tells a :class:`cola.sweep.JobRecord` the total number of optimiser steps when training starts, the step
    reached after every batch (written with the next heartbeat) and, at every checkpoint, the step and the best
    monitored score so far (written at once).

    Args:
        record: the run's job record.
    """

    def __init__(self, record: Any) -> None:
        self.record = record

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        finite = isinstance(total, (int, float)) and math.isfinite(total)
        self.record.progress(step=trainer.global_step, total=int(total) if finite else None)
        self.record.write()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.record.progress(step=trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        best = None
        tracker = trainer.checkpoint_callback
        score = getattr(tracker, "best_model_score", None)
        if score is not None and math.isfinite(float(score)):
            best = {"monitor": str(tracker.monitor), "score": float(score), "step": int(trainer.global_step)}
        self.record.progress(step=trainer.global_step, best=best)
        self.record.write()
