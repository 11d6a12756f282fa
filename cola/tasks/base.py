"""Shared LightningModule for every task: optimiser groups, schedules, per-split metrics, lean checkpoints.

A task subclass provides the heads and four hooks: ``forward(batch)``, ``compute_loss(out, batch)``,
``make_metrics()`` and ``update_metrics(metrics, out, batch)``. This base class handles the rest:

- fills the ``optimizer`` and ``scheduler`` partials (:mod:`cola.optim`: AdamW or Adam; linear warm-up then
  ``cosine``, ``poly`` or ``constant`` decay) with its parameter groups, two learning rates (``lr_adapters`` for
  adapter parameters, or with ``peft=full`` the towers; ``lr_heads`` for everything else that trains: fusion,
  heads) and the schedule's length, stepped per optimiser step or per epoch (``schedule_interval``; the official
  grounding poly schedule is ``lr (1 - epoch / E)^0.9`` per epoch);
- metrics per split, logged as ``<split>/<name>`` (``val/acc@0.5``, ``testA/oiou``);
- checkpoints without the frozen towers (rebuilt identically from their source and the seed), with the
  peft node stored inside (the encoder's :class:`cola.peft.PeftSpec`, ``to_dict()``) so a checkpoint of another
  config fails with a clear message; what trains at which rate and what a checkpoint holds is asked of the method
  (:class:`cola.peft.Method`), never decided by its name;
- a non-finite loss stops the run or skips the batch (``on_nonfinite``; gradients: :mod:`cola.callbacks.nonfinite`);
- the intra variants' training hooks (:mod:`cola.peft.variants`), asked of the encoder and never by variant name:
  their loss terms are added to the task's loss (AdaLoRA's ``orth_reg``), they learn the run's number of optimiser
  steps from the trainer when fitting starts, and their per-step hook runs after every optimiser step (once per
  accumulated step; AdaLoRA's importance, budget and masks), whose state lives in the adapters' buffers and so in
  every checkpoint.

Resumption state beyond the module's own (RNG states, loader position) lives in :mod:`cola.callbacks.resume`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import lightning as L
import torch
from torch import nn

from cola.callbacks.nonfinite import NonFiniteLossError, check_policy, nonfinite_loss  # noqa: F401  (re-exported)
from cola.dicts import check_choice
from cola.optim import INTERVALS, adam, check_loraplus_ratio, warmup_schedule
from cola.peft import PeftSpec, diff_configs, is_adapter_param, is_up_projection, upgrade_state_keys

log = logging.getLogger(__name__)

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _safe(name: str) -> str:
    return name.replace(".", "_")


class DualStreamTask(L.LightningModule):
    """Base class of the task modules.

    Args:
        encoder: the :class:`cola.models.DualEncoder` (towers + adapters).
        optimizer: a partial optimiser (``optim.optimizer_cfg``) called with the parameter groups and ``fused``;
            default :func:`cola.optim.adam` (AdamW, betas (0.9, 0.999)).
        scheduler: a partial schedule (``optim.scheduler_cfg``) called with the optimiser and ``total`` (the
            schedule's length); default :func:`cola.optim.warmup_schedule` (5 % warm-up, then cosine to 0).
        lr_adapters: learning rate of the adapter parameters (towers too under ``peft=full``).
        lr_heads: learning rate of the task heads and fusion layers.
        weight_decay: weight decay (AdamW: decoupled; Adam: L2 added to the gradient).
        decay_1d: also decay 1-D parameters (biases, norms, lambda), as the official grounding code does (one
            weight decay for every trainable parameter); ``False`` exempts them (the usual transformer recipe).
        schedule_interval: ``step`` (per optimiser step) | ``epoch`` (per epoch, as the official code).
        eval_splits: the split names evaluated (val first, then the test splits in loader order).
        test_splits: the split names of the test loaders, in order.
        on_nonfinite: ``raise`` (default) or ``skip`` the batch (optimiser step) when the loss (a gradient) is not
            finite.
        loraplus_ratio: LoRA+ (Hayou et al., 2024): the B matrices of every adapter (``lora_B``, ``cola_B``,
            ``moka_B``) train at ``lr_adapters * loraplus_ratio`` in a group of their own; ``None`` = off.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        lr_adapters: float = 1e-4,
        lr_heads: float = 1e-4,
        weight_decay: float = 0.01,
        decay_1d: bool = False,
        schedule_interval: str = "step",
        val_split: str = "val",
        test_splits: list[str] | tuple[str, ...] = ("test",),
        on_nonfinite: str = "raise",
        loraplus_ratio: float | None = None,
    ) -> None:
        super().__init__()
        check_choice("optim.schedule_interval", schedule_interval, INTERVALS)
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be a number >= 0, got {weight_decay!r}")
        self.encoder = encoder
        check_loraplus_ratio(loraplus_ratio, self.peft.method if self.peft is not None else None)
        self.make_optimizer = optimizer if optimizer is not None else partial(adam, name="adamw")
        self.make_scheduler = scheduler if scheduler is not None else partial(warmup_schedule, schedule="cosine")
        self.lr_adapters, self.lr_heads = lr_adapters, lr_heads
        self.weight_decay, self.decay_1d = weight_decay, bool(decay_1d)
        self.schedule_interval = schedule_interval
        self.val_split = val_split
        self.test_splits = list(test_splits)
        self.on_nonfinite = check_policy(on_nonfinite)
        self.loraplus_ratio = loraplus_ratio
        self.strict_loading = False  # checkpoints omit the frozen towers; on_load_checkpoint checks the rest
        self.skipped_batches = 0  # batches skipped for a non-finite loss or non-finite gradients
        self.last_terms: dict[str, torch.Tensor] = {}  # the last training loss terms (named by NonFiniteGuard)
        self._metric_splits: nn.ModuleDict | None = None

    @property
    def peft(self) -> PeftSpec | None:
        """The parsed ``peft`` node the encoder was built from (``None``: an encoder without one, in tests)."""
        return getattr(self.encoder, "peft", None)

    def peft_node(self) -> dict[str, Any]:
        """The ``peft`` node as a plain dict: what checkpoints store and compare (``{}`` without one)."""
        return self.peft.to_dict() if self.peft is not None else {}

    @property
    def trains_towers(self) -> bool:
        """Whether the towers themselves train (``peft=full``): they are then adapters for the optimiser and kept in
        checkpoints and adapter files."""
        return self.peft is not None and self.peft.method.trains_towers

    # ------------------------------------------------------------------ hooks for subclasses
    def make_metrics(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def encoder_inputs(self, batch: dict) -> dict[str, dict[str, torch.Tensor]]:
        """The encoder inputs of a batch by stream, as ``forward`` builds them (used by analysis scripts)."""
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
    def setup(self, stage: str) -> None:
        if stage == "fit":
            # One mode for every tower: transformers' from_pretrained returns its model in eval mode while randomly
            # initialised towers start in train mode, and Lightning keeps the modes it finds. Frozen towers train in
            # train mode (their own dropout active), as in the official code and HF's Trainer. (In setup, so the
            # model summary printed at fit start shows it.)
            self.train()

    def on_fit_start(self) -> None:
        # the trainer's optimiser steps (max_steps, or epochs x batches / accumulation): the length the intra
        # variants' schedules need (AdaLoRA's total_step), never a number the user types
        self.total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        prepare = getattr(self.encoder, "prepare_training", None)
        if prepare is not None:
            prepare(self.total_steps)
        budget = self.intra_budget()
        if budget is not None:
            log.info(
                "intra rank budget (%s): initial rank %s -> target %s over %d matrices, %s optimiser steps",
                budget["intra"],
                budget["initial_rank"],
                budget["target_rank"],
                budget["matrices"],
                self.total_steps,
            )
        counts = self.parameter_counts()
        log.info("parameters: %s trainable of %s", f"{counts['trainable']:,}", f"{counts['total']:,}")
        if self.logger is not None:
            for lg in self.loggers:
                lg.log_metrics(
                    {"model/params_trainable": counts["trainable"], "model/params_total": counts["total"]}, 0
                )

    def on_train_end(self) -> None:
        budget = self.intra_budget()
        if budget is not None:
            b, p = budget["budget"], budget["intra_params"]
            log.info(
                "intra rank budget (%s) after training: %d of %d triplets kept (target %d), intra parameters %s of %s",
                budget["intra"],
                b["final"],
                b["initial"],
                b["target"],
                f"{p['final']:,}",
                f"{p['initial']:,}",
            )

    def parameter_counts(self) -> dict[str, int]:
        params = {id(p): p for p in self.parameters()}.values()
        return {"trainable": sum(p.numel() for p in params if p.requires_grad), "total": sum(p.numel() for p in params)}

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample unreadable: nothing to learn from
            return None
        out = self(batch)
        loss, terms = self.compute_loss(out, batch)
        extra = getattr(self.encoder, "extra_losses", None)
        for name, value in (extra() if extra is not None else {}).items():  # the intra variants' own terms
            loss = loss + value
            terms = {**terms, name: value.detach()}
        self.last_terms = terms
        if not torch.isfinite(loss):
            return nonfinite_loss(self, loss, terms, self.on_nonfinite)
        bs = self._batch_size(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v for k, v in terms.items()}, batch_size=bs)
        return loss

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
        """Adapters / heads x decay / no decay (1-D tensors and lambda are not decayed unless ``decay_1d``), and with
        ``loraplus_ratio`` the adapters' B matrices in ``adapters_B`` at ``lr_adapters * ratio`` (decayed as their
        A). LoRA+ touches B matrices only: DoRA magnitudes, lambdas and hypernetworks keep ``lr_adapters``, whereas
        HF peft's ``create_loraplus_optimizer`` puts every 1-D adapter tensor (DoRA's magnitude too) in its B group."""
        names = ("adapters", "adapters_B", "adapters_no_wd", "adapters_B_no_wd", "heads", "heads_no_wd")
        groups: dict[str, list[nn.Parameter]] = {k: [] for k in names}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            in_encoder = name.startswith("encoder.")
            adapter = is_adapter_param(name) if self.peft is None else self.peft.method.in_adapter_group(name)
            key = "adapters" if in_encoder and adapter else "heads"
            if key == "adapters" and self.loraplus_ratio is not None and is_up_projection(name):
                key = "adapters_B"
            no_wd = not self.decay_1d and p.ndim <= 1  # biases, norms and the methods' gates (lambda: one per slice)
            groups[key + ("_no_wd" if no_wd else "")].append(p)
        lrs = {"adapters": self.lr_adapters, "heads": self.lr_heads}
        if self.loraplus_ratio is not None:
            lrs["adapters_B"] = self.lr_adapters * self.loraplus_ratio
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

    def schedule_length(self) -> int:
        """The schedule's length: the trainer's optimiser steps, or ``trainer.max_epochs`` per epoch."""
        if self.schedule_interval == "step":
            return max(1, int(self.trainer.estimated_stepping_batches))
        total = self.trainer.max_epochs
        if total is None or total < 1:
            raise ValueError(
                "optim.schedule_interval=epoch needs trainer.max_epochs (the schedule's length), got "
                f"{total!r}; set trainer.max_epochs or use optim.schedule_interval=step"
            )
        return total

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """The optimiser step, then the intra variants' per-step hook (:meth:`cola.models.DualEncoder.after_optimizer_step`)
        while the gradients are still in ``.grad`` (Lightning zeroes them in the next step's closure). Lightning calls
        this once per optimiser step (after the last accumulated batch); ``global_step`` counts the step only once
        this returns, so it is the step's 0-based index here, as HF peft's ``update_and_allocate(global_step)``."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        hook = getattr(self.encoder, "after_optimizer_step", None)
        if hook is not None:
            total = getattr(self, "total_steps", None) or max(1, int(self.trainer.estimated_stepping_batches))
            hook(self.global_step, total)

    def intra_budget(self) -> dict[str, Any] | None:
        """The adaptive intra variant's rank budget now (``None`` without one): initial, target and current ranks,
        intra-path parameters at each, and the rank of every layer (:func:`cola.peft.intra_budget`)."""
        budget = getattr(self.encoder, "intra_budget", None)
        return budget() if budget is not None else None

    def budget_summary(self) -> dict[str, int]:
        """Flat entries for ``metrics.json`` under an adaptive intra variant (none otherwise): the kept ranks summed
        over the model's matrices (``params/intra_ranks_{initial,target,final}``) and the trainable parameters at
        each budget (``params/trainable_at_{initial,target,final}_budget``). Masked ranks keep their tensors, so
        ``params/trainable`` stays the initial count."""
        budget = self.intra_budget()
        if budget is None:
            return {}
        trainable = self.parameter_counts()["trainable"]
        intra = budget["intra_params"]
        out = {f"params/intra_ranks_{k}": int(v) for k, v in budget["budget"].items()}
        for k in ("initial", "target", "final"):
            out[f"params/trainable_at_{k}_budget"] = int(trainable - intra["initial"] + intra[k])
        return out

    def configure_optimizers(self):
        """Fills the optimiser partial with :meth:`param_groups` and the schedule partial with its length."""
        groups = self.param_groups()
        if not groups:
            raise ValueError("nothing to train: no parameter requires grad (check peft.method and the task heads)")
        # Fused AdamW: one kernel per step over all tensors; torch's CPU default is a Python loop over the
        # (hundreds of small) adapter tensors, a visible share of a CPU step.
        params = [p for g in groups for p in g["params"]]
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in _FUSED_DTYPES for p in params) or None
        opt = self.make_optimizer(groups, fused=fused)
        sched = self.make_scheduler(opt, total=self.schedule_length())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.schedule_interval}}

    # ------------------------------------------------------------------ checkpoints
    def head_prefixes(self) -> tuple[str, ...]:
        """Name prefixes of what ``adapter.safetensors`` holds besides adapters: the heads (and, under
        ``peft=full``, the towers themselves)."""
        prefixes = tuple(f"{n}." for n, _ in self.named_children() if n != "encoder")
        return prefixes + (("encoder.",) if self.trains_towers else ())

    def trainable_state_keys(self) -> set[str]:
        params = dict(self.named_parameters())
        keys = {n for n, p in params.items() if p.requires_grad}
        # buffers of the heads (e.g. norms' running stats) are kept; tower buffers are rebuilt with the towers
        # (persistent ones: a non-persistent buffer, e.g. fixed positions, is rebuilt by the constructor)
        keys |= {n for n in self.state_dict() if not n.startswith("encoder.") and n not in params}
        # every adapter tensor, trained or frozen (CoLA's random_frozen hypernetworks, VeRA's random matrices) and
        # buffers (PiSSA's initial factors, on which a reload re-bases the residual): a reload is exact
        keys |= {n for n in self.state_dict() if n.startswith("encoder.") and is_adapter_param(n)}
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["cola_peft_config"] = self.peft_node()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint_fits(checkpoint)

    def check_checkpoint_fits(self, checkpoint: dict[str, Any], *, exact: bool = False) -> None:
        """Raises ``ValueError`` if ``checkpoint`` was made with another peft config or lacks trainable tensors of
        this model (with ``exact``, also if it holds tensors this model does not have)."""
        # names written before the towers were named by stream (tower_a. -> towers.vision.) load too
        checkpoint["state_dict"] = upgrade_state_keys(self, checkpoint["state_dict"])
        saved, current = checkpoint.get("cola_peft_config"), self.peft_node()
        # a config written before peft.intra existed means intra=lora (diff_configs fills such keys)
        diffs = diff_configs(saved, current, labels=("checkpoint", "run")) if saved is not None and current else []
        if diffs:
            raise ValueError("checkpoint was made with another peft config: " + "; ".join(diffs))
        want, keys = self.trainable_state_keys(), set(checkpoint["state_dict"])
        missing, unexpected = sorted(want - keys), sorted(keys - want) if exact else []
        if missing or unexpected:
            raise ValueError(
                f"checkpoint lacks {len(missing)} trainable tensors of this model (e.g. {missing[:3]})"
                + (f" and holds {len(unexpected)} it does not have (e.g. {unexpected[:3]})" if unexpected else "")
                + "; was it made with another task, model or peft config?"
            )
