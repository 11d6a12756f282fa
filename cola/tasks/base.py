"""Shared LightningModule for every task: optimiser groups, schedules, per-split metrics, lean checkpoints.

A task subclass provides the heads and four hooks: ``forward(batch)``, ``compute_loss(out, batch)``,
``make_metrics()`` and ``update_metrics(metrics, out, batch)``. This base class handles the rest:

- AdamW or Adam (``optimizer``) with two learning rates: ``lr_adapters`` for adapter parameters (or, with
  ``peft=full``, the towers) and ``lr_heads`` for everything else that trains (fusion, heads);
- linear warm-up then ``cosine``, ``poly`` or ``constant`` decay, stepped per optimiser step or per epoch
  (``schedule_interval``; the official grounding poly schedule is ``lr (1 - epoch / E)^0.9`` per epoch);
- metrics per split, logged as ``<split>/<name>`` (``val/acc@0.5``, ``testA/oiou``);
- checkpoints without the frozen towers (rebuilt identically from their source and the seed), with the
  peft config stored inside so a checkpoint of another config fails with a clear message;
- non-finite losses or gradients stop the run naming the step, the loss terms (or parameters) and the last good
  checkpoint (``on_nonfinite: raise``), or skip the batch / optimiser step (``skip``);
- exact resumption: checkpoints also hold the torch / numpy / python (and CUDA) RNG states, restored when a resumed
  fit starts (the sampler position is the training DataLoader's state, :mod:`cola.data.resumable`).
"""

from __future__ import annotations

import logging
import math
import os
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from cola.data.resumable import rewind_in_flight_batch
from cola.peft import is_adapter_param

log = logging.getLogger(__name__)

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

SCHEDULES = ("cosine", "poly", "constant")
OPTIMIZERS = ("adamw", "adam")
INTERVALS = ("step", "epoch")


def _safe(name: str) -> str:
    return name.replace(".", "_")


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss or gradient is NaN/inf and ``on_nonfinite='raise'``."""


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


class DualStreamTask(L.LightningModule):
    """Base class of the task modules.

    Args:
        encoder: the :class:`cola.models.DualEncoder` (towers + adapters).
        lr_adapters: learning rate of the adapter parameters (towers too under ``peft=full``).
        lr_heads: learning rate of the task heads and fusion layers.
        optimizer: ``adamw`` (decoupled weight decay) | ``adam`` (official AVE / AVS, with weight decay 0).
        weight_decay: weight decay (AdamW: decoupled; Adam: L2 added to the gradient).
        decay_1d: also decay 1-D parameters (biases, norms, lambda), as the official grounding code does (one
            weight decay for every trainable parameter); ``False`` exempts them (the usual transformer recipe).
        betas: Adam(W) betas.
        schedule: ``cosine`` | ``poly`` | ``constant`` after the warm-up.
        schedule_interval: ``step`` (per optimiser step) | ``epoch`` (per epoch, as the official code).
        warmup_ratio: fraction of the schedule's steps (or epochs) used for linear warm-up.
        poly_power: exponent of the ``poly`` schedule.
        min_lr_ratio: final learning rate as a fraction of the peak (cosine).
        eval_splits: the split names evaluated (val first, then the test splits in loader order).
        test_splits: the split names of the test loaders, in order.
        on_nonfinite: ``raise`` (default) or ``skip`` the batch (optimiser step) when the loss (a gradient) is not
            finite.
        peft_config: the peft config (plain dict) stored in checkpoints and checked on load.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        lr_adapters: float = 1e-4,
        lr_heads: float = 1e-4,
        optimizer: str = "adamw",
        weight_decay: float = 0.01,
        decay_1d: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        schedule: str = "cosine",
        schedule_interval: str = "step",
        warmup_ratio: float = 0.05,
        poly_power: float = 0.9,
        min_lr_ratio: float = 0.0,
        val_split: str = "val",
        test_splits: list[str] | tuple[str, ...] = ("test",),
        on_nonfinite: str = "raise",
        peft_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optim.optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        if schedule_interval not in INTERVALS:
            raise ValueError(f"optim.schedule_interval must be one of {list(INTERVALS)}, got {schedule_interval!r}")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be a number >= 0, got {weight_decay!r}")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"optim.on_nonfinite must be one of ['raise', 'skip'], got {on_nonfinite!r}")
        self.encoder = encoder
        self.lr_adapters, self.lr_heads = lr_adapters, lr_heads
        self.optimizer_name, self.decay_1d = optimizer, bool(decay_1d)
        self.weight_decay, self.betas = weight_decay, tuple(betas)
        self.schedule, self.schedule_interval, self.warmup_ratio = schedule, schedule_interval, warmup_ratio
        self.poly_power, self.min_lr_ratio = poly_power, min_lr_ratio
        self.val_split = val_split
        self.test_splits = list(test_splits)
        self.on_nonfinite = on_nonfinite
        self.peft_config = dict(peft_config or {})
        self.strict_loading = False  # checkpoints omit the frozen towers; on_load_checkpoint checks the rest
        self.skipped_batches = 0  # batches skipped for a non-finite loss or non-finite gradients
        self._metric_splits: nn.ModuleDict | None = None
        self._rng_to_restore: dict[str, Any] | None = None
        self._rng_between_batches: dict[str, Any] | None = None  # before the running batch was drawn
        self._last_terms: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ hooks for subclasses
    def make_metrics(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def encoder_inputs(self, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The two streams' encoder inputs for a batch, as ``forward`` builds them (used by analysis scripts)."""
        raise NotImplementedError

    def compute_loss(self, out: Any, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def update_metrics(self, metrics: dict[str, nn.Module], out: Any, batch: dict) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ metrics per split
    @property
    def split_metrics(self) -> nn.ModuleDict:
        if self._metric_splits is None:
            splits = list(dict.fromkeys([self.val_split, *self.test_splits]))
            # ModuleDict keys may not contain "." (acc@0.5): store under a safe key, log under the real name
            self._metric_names = {_safe(n): n for n in self.make_metrics()}
            self._metric_splits = nn.ModuleDict(
                {_safe(s): nn.ModuleDict({_safe(n): m for n, m in self.make_metrics().items()}) for s in splits}
            ).to(self.device)
        return self._metric_splits

    def metrics_of(self, split: str) -> dict[str, nn.Module]:
        """The metric objects of ``split`` under their real names (``acc@0.5``, ``miou``)."""
        group = self.split_metrics[_safe(split)]
        return {self._metric_names[k]: m for k, m in group.items()}

    def _log_and_reset(self, split: str) -> dict[str, float]:
        values = {}
        metrics = self.metrics_of(split)
        if metrics and all(getattr(m, "update_count", 1) == 0 for m in metrics.values()):
            # every batch of the split was unreadable (skipped by the DataModule): NaN, not a missing key that
            # would stop the run at the checkpoint's monitor
            log.warning("split %s: no readable sample was evaluated; its metrics are NaN", split)
            values = {f"{split}/{name}": float("nan") for name in metrics}
        for name, metric in metrics.items():
            if getattr(metric, "update_count", 1) == 0:
                continue
            values[f"{split}/{name}"] = float(metric.compute())
            metric.reset()
        if values:
            self.log_dict(values, prog_bar=split == self.val_split, sync_dist=False, add_dataloader_idx=False)
        return values

    # ------------------------------------------------------------------ steps
    def on_train_start(self) -> None:
        loop = self.trainer.fit_loop
        if loop._combined_loader_states_to_load:
            # Lightning hands a resumed training DataLoader its saved state (the sampler position) only when it
            # builds the loader after loading the checkpoint; configure_optimizers (estimated_stepping_batches)
            # builds it before. Hand it over now, before the first batch is drawn (cola.data.resumable loaders
            # start an epoch lazily, at the first batch)
            loop._load_combined_loader_states()
        if self._rng_to_restore is not None:
            # now, not in on_load_checkpoint: restoring must be the last thing before the first resumed batch
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        if self.trainer.ckpt_path and self.trainer.is_global_zero:
            log.info(
                "resumed from %s at global step %d (epoch %d)",
                self.trainer.ckpt_path,
                self.trainer.global_step,
                self.trainer.current_epoch,
            )

    def on_train_epoch_start(self) -> None:
        self._rng_between_batches = rng_states()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._rng_between_batches = rng_states()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            # One mode for every tower: transformers' from_pretrained returns its model in eval mode while randomly
            # initialised towers start in train mode, and Lightning keeps the modes it finds. Frozen towers train in
            # train mode (their own dropout active), as in the official code and HF's Trainer. (In setup, so the
            # model summary printed at fit start shows it.)
            self.train()

    def on_fit_start(self) -> None:
        counts = self.parameter_counts()
        log.info("parameters: %s trainable of %s", f"{counts['trainable']:,}", f"{counts['total']:,}")
        if self.logger is not None:
            for lg in self.loggers:
                lg.log_metrics(
                    {"model/params_trainable": counts["trainable"], "model/params_total": counts["total"]}, 0
                )

    def parameter_counts(self) -> dict[str, int]:
        params = {id(p): p for p in self.parameters()}.values()
        return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample unreadable: nothing to learn from
            return None
        out = self(batch)
        loss, terms = self.compute_loss(out, batch)
        self._last_terms = terms
        if not torch.isfinite(loss):
            return self._non_finite(loss, terms)
        bs = self._batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs)
        return loss

    def _non_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        if self.on_nonfinite == "skip":
            self.skipped_batches += 1
            log.warning("step %d: non-finite loss %s (%s); batch skipped", self.global_step, loss.item(), detail)
            return None
        raise NonFiniteLossError(
            f"non-finite loss {loss.item()} at step {self.global_step} ({detail}); last good checkpoint: "
            f"{self._last_checkpoint()}. Lower the learning rate, or set optim.on_nonfinite=skip to skip such batches."
        )

    def _last_checkpoint(self) -> str:
        """The newest checkpoint this run wrote (``last.ckpt`` of any ModelCheckpoint), or ``none yet``."""
        paths = [getattr(cb, "last_model_path", "") for cb in getattr(self.trainer, "checkpoint_callbacks", [])]
        paths = [p for p in paths if p and os.path.isfile(p)]
        return max(paths, key=os.path.getmtime) if paths else "none yet"

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stops (``raise``) or skips the step (``skip``) when a gradient holds NaN/inf.

        Runs after backward (and gradient accumulation), before clipping and the optimiser step.
        """
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling: the GradScaler skips such steps itself and lowers its scale
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # one fused reduction; it is non-finite iff some gradient is (or the squares overflow: checked below)
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        bad = [n for n, p in self.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not bad:
            return
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        if self.on_nonfinite == "skip":
            self.skipped_batches += 1
            log.warning("step %d: non-finite gradients in %s; optimiser step skipped", self.global_step, names)
            # AdamW leaves parameters without a gradient untouched: no update, no moment or weight-decay change
            optimizer.zero_grad(set_to_none=True)
            return
        detail = ", ".join(f"{k}={float(v):.4g}" for k, v in self._last_terms.items())
        raise NonFiniteLossError(
            f"non-finite gradients at step {self.global_step} in {len(bad)} parameter(s): {names} (finite loss terms: "
            f"{detail or 'n/a'}); last good checkpoint: {self._last_checkpoint()}. Lower the learning rate, or set "
            "optim.on_nonfinite=skip to skip such steps."
        )

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        if batch is None:  # every sample of the batch was unreadable (counted and reported by the DataModule)
            return
        out = self(batch)
        self.update_metrics(self.metrics_of(self.val_split), out, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_and_reset(self.val_split)

    def test_step(self, batch: dict | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch is None:
            return
        out = self(batch)
        self.update_metrics(self.metrics_of(self.test_splits[dataloader_idx]), out, batch)

    def on_test_epoch_end(self) -> None:
        for split in self.test_splits:
            self._log_and_reset(split)

    @staticmethod
    def _batch_size(batch: dict) -> int:
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return v.shape[0]
        return 1

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict[str, Any]]:
        groups: dict[str, list[nn.Parameter]] = {"adapters": [], "adapters_no_wd": [], "heads": [], "heads_no_wd": []}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            in_encoder = name.startswith("encoder.")
            key = (
                "adapters"
                if in_encoder and (is_adapter_param(name) or self.peft_config.get("method") == "full")
                else "heads"
            )
            no_wd = not self.decay_1d and (p.ndim <= 1 or name.endswith("cola_lambda"))
            groups[key + ("_no_wd" if no_wd else "")].append(p)
        lrs = {"adapters": self.lr_adapters, "heads": self.lr_heads}
        return [
            {
                "params": ps,
                "lr": lrs[k.split("_no_wd")[0]],
                "weight_decay": 0.0 if k.endswith("_no_wd") else self.weight_decay,
                "name": k,
            }
            for k, ps in groups.items()
            if ps
        ]

    def lr_factor(self, step: int, total: int) -> float:
        warmup = max(1, int(self.warmup_ratio * total)) if self.warmup_ratio > 0 else 0
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if self.schedule == "cosine":
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.schedule == "poly":
            return (1 - progress) ** self.poly_power
        return 1.0

    def configure_optimizers(self):
        groups = self.param_groups()
        if not groups:
            raise ValueError("nothing to train: no parameter requires grad (check peft.method and the task heads)")
        # Fused AdamW: one kernel per step over all tensors; torch's CPU default is a Python loop over the
        # (hundreds of small) adapter tensors, a visible share of a CPU step.
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params) or None
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        opt = cls(groups, betas=self.betas, fused=fused)
        if self.schedule_interval == "epoch":
            total = self.trainer.max_epochs
            if total is None or total < 1:
                raise ValueError(
                    "optim.schedule_interval=epoch needs trainer.max_epochs (the schedule's length), got "
                    f"{total!r}; set trainer.max_epochs or use optim.schedule_interval=step"
                )
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: self.lr_factor(i, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.schedule_interval}}

    # ------------------------------------------------------------------ checkpoints
    def head_prefixes(self) -> tuple[str, ...]:
        """Name prefixes of what ``adapter.safetensors`` holds besides adapters: the heads (and, under
        ``peft=full``, the towers themselves)."""
        prefixes = tuple(f"{n}." for n, _ in self.named_children() if n != "encoder")
        return prefixes + (("encoder.",) if self.peft_config.get("method") == "full" else ())

    def trainable_state_keys(self) -> set[str]:
        params = dict(self.named_parameters())
        keys = {n for n, p in params.items() if p.requires_grad}
        # buffers of the heads (e.g. norms' running stats) are kept; tower buffers are rebuilt with the towers
        # (persistent ones: a non-persistent buffer, e.g. fixed positions, is rebuilt by the constructor)
        keys |= {n for n in self.state_dict() if not n.startswith("encoder.") and n not in params}
        # CoLA's random_frozen hypernetworks are frozen but random: keep them so a reload is exact
        keys |= {n for n in params if n.startswith("encoder.") and ".cola_hypernet." in n}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["cola_peft_config"] = self.peft_config
        trainer = self._trainer
        progress = trainer.fit_loop.epoch_loop.batch_progress.current if trainer is not None else None
        if (
            trainer is not None
            and trainer.training
            and progress.ready > progress.processed
            and self._rng_between_batches
        ):
            # written in the middle of a training batch (a signal handler: SLURM's SIGUSR1): the resumed run
            # redoes that batch, so it gets the RNG state and sampler position from before it was drawn
            checkpoint["cola_rng_states"] = self._rng_between_batches
            fit_state = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
            if "combined_loader" in fit_state:
                fit_state["combined_loader"] = [rewind_in_flight_batch(s) for s in fit_state["combined_loader"]]
        else:
            checkpoint["cola_rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rng_to_restore = checkpoint.get("cola_rng_states")  # applied when a resumed fit starts
        self.check_checkpoint_fits(checkpoint)

    def check_checkpoint_fits(self, checkpoint: dict[str, Any], *, exact: bool = False) -> None:
        """Raises ``ValueError`` if ``checkpoint`` was made with another peft config or lacks trainable tensors of
        this model (with ``exact``, also if it holds tensors this model does not have)."""
        saved = checkpoint.get("cola_peft_config")
        if saved is not None and self.peft_config and saved != self.peft_config:
            diffs = [
                f"{k}: checkpoint {saved.get(k)!r} != run {self.peft_config.get(k)!r}"
                for k in sorted(set(saved) | set(self.peft_config))
                if saved.get(k) != self.peft_config.get(k)
            ]
            raise ValueError("checkpoint was made with another peft config: " + "; ".join(diffs))
        want, keys = self.trainable_state_keys(), set(checkpoint["state_dict"])
        missing, unexpected = sorted(want - keys), sorted(keys - want) if exact else []
        if missing or unexpected:
            raise ValueError(
                f"checkpoint lacks {len(missing)} trainable tensors of this model (e.g. {missing[:3]})"
                + (f" and holds {len(unexpected)} it does not have (e.g. {unexpected[:3]})" if unexpected else "")
                + "; was it made with another task, model or peft config?"
            )
