"""Exact resumption: which checkpoint a run continues from, and the state Lightning does not restore by itself.

A training checkpoint holds adapters, heads, optimiser, scheduler, loop progress, the best-checkpoint tracker and
the training DataLoader's position (:mod:`cola.data.resumable`). :class:`ResumeState` adds what makes the
continuation bit-exact on CPU and is the only code that reads or rewrites Lightning's private loop state:

- the torch / numpy / python (and CUDA) RNG states (``cola_rng_states``), restored as the last thing before the first
  resumed batch;
- the hand-over of the loader position to a loader built before the checkpoint was loaded;
- the rewind of a batch that was in flight when the checkpoint was written (SLURM's SIGUSR1 handler saves from
  inside a training step: the resumed run redoes that batch, with the RNG state from before it was drawn).

:class:`SaveOnSigterm` writes ``last.ckpt`` when a run is stopped by SIGTERM; :func:`cola.runio.resolve_ckpt_path`
turns ``ckpt_path`` (``last``, a path, or a requeued SLURM job's own checkpoints) into the file ``trainer.fit`` loads.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cola.data.resumable import rewind_in_flight_batch

log = logging.getLogger(__name__)

RNG_KEY = "cola_rng_states"  # top-level checkpoint key


def rng_states() -> dict[str, Any]:
    """The torch, numpy, python (and initialised CUDA) RNG states, as tensors and plain Python values only, so
    the checkpoint still loads with ``torch.load(weights_only=True)``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(name), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restores what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"].cpu())
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class ResumeState(L.Callback):
    """Saves the RNG states in every checkpoint and restores them, with the loader position, when a resumed fit
    starts (see the module docstring)."""

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._between_batches: dict[str, Any] | None = None  # before the running batch was drawn

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.fit_loop
        if loop._combined_loader_states_to_load:
            # Lightning hands a resumed training DataLoader its saved state (the sampler position) only when it
            # builds the loader after loading the checkpoint; configure_optimizers (estimated_stepping_batches)
            # builds it before. Hand it over now, before the first batch is drawn (cola.data.resumable loaders
            # start an epoch lazily, at the first batch)
            loop._load_combined_loader_states()
        if self._to_restore is not None:
            # now, not in on_load_checkpoint: restoring must be the last thing before the first resumed batch
            set_rng_states(self._to_restore)
            self._to_restore = None
        if trainer.ckpt_path and trainer.is_global_zero:
            log.info(
                "resumed from %s at global step %d (epoch %d)",
                trainer.ckpt_path,
                trainer.global_step,
                trainer.current_epoch,
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._between_batches = rng_states()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._between_batches = rng_states()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if trainer.training and progress.ready > progress.processed and self._between_batches:
            # written in the middle of a training batch (a signal handler: SLURM's SIGUSR1): the resumed run
            # redoes that batch, so it gets the RNG state and sampler position from before it was drawn
            checkpoint[RNG_KEY] = self._between_batches
            fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
            if "combined_loader" in fit_state:
                fit_state["combined_loader"] = [rewind_in_flight_batch(s) for s in fit_state["combined_loader"]]
        else:
            checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._to_restore = checkpoint.get(RNG_KEY)  # applied when a resumed fit starts


class SaveOnSigterm(L.Callback):
    """Writes ``last.ckpt`` when training stops on SIGTERM.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the end of the running training batch; its
    ``on_exception`` hook then runs here with the batch complete, so the checkpoint resumes exactly.

    Args:
        path: the checkpoint to write (``<run dir>/checkpoints/last.ckpt``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            trainer.save_checkpoint(self.path)
            if trainer.is_global_zero:
                log.warning("SIGTERM: saved %s at global step %d", self.path, trainer.global_step)
