"""Non-finite losses and gradients: stop the run naming the step, the loss terms (or parameters) and the last good
checkpoint (``optim.on_nonfinite=raise``, the default), or skip the batch / optimiser step (``skip``).

A non-finite *loss* is caught by the task's ``training_step`` (returning ``None`` skips backward and the step,
which only the step itself can do) with :func:`nonfinite_loss`; non-finite *gradients* by :class:`NonFiniteGuard`
after backward, before clipping and the optimiser step. Both count skips in the module's ``skipped_batches``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import lightning as L
import torch

from cola.dicts import check_choice

log = logging.getLogger(__name__)

POLICIES = ("raise", "skip")


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss or gradient is NaN/inf and ``on_nonfinite='raise'``."""


def check_policy(policy: str) -> str:
    """Returns ``policy`` if it is one of :data:`POLICIES`, else raises ``ValueError`` naming the key."""
    return check_choice("optim.on_nonfinite", policy, POLICIES)


def last_checkpoint(trainer: Any) -> str:
    """The newest checkpoint this run wrote (``last.ckpt`` of any ModelCheckpoint), or ``none yet``."""
    paths = [getattr(cb, "last_model_path", "") for cb in getattr(trainer, "checkpoint_callbacks", [])]
    paths = [p for p in paths if p and os.path.isfile(p)]
    return max(paths, key=os.path.getmtime) if paths else "none yet"


def _terms(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())


def nonfinite_loss(module: L.LightningModule, loss: torch.Tensor, terms: dict[str, torch.Tensor], policy: str) -> None:
    """What a training step with a non-finite ``loss`` does: counts and skips it (returns ``None``, the step's
    result) under ``skip``, raises :class:`NonFiniteLossError` under ``raise``."""
    if policy == "skip":
        module.skipped_batches += 1
        log.warning("step %d: non-finite loss %s (%s); batch skipped", module.global_step, loss.item(), _terms(terms))
        return None
    raise NonFiniteLossError(
        f"non-finite loss {loss.item()} at step {module.global_step} ({_terms(terms)}); last good checkpoint: "
        f"{last_checkpoint(module.trainer)}. Lower the learning rate, or set optim.on_nonfinite=skip to skip such "
        "batches."
    )


class NonFiniteGuard(L.Callback):
    """Stops (``raise``) or skips the optimiser step (``skip``) when a gradient holds NaN/inf.

    Args:
        policy: ``raise`` or ``skip`` (``optim.on_nonfinite``).
    """

    def __init__(self, policy: str = "raise") -> None:
        self.policy = check_policy(policy)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 loss scaling: the GradScaler skips such steps itself and lowers its scale
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # one fused reduction; it is non-finite iff some gradient is (or the squares overflow: checked below)
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        bad = [n for n, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if not bad:
            return
        names = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        if self.policy == "skip":
            pl_module.skipped_batches += 1
            log.warning("step %d: non-finite gradients in %s; optimiser step skipped", trainer.global_step, names)
            # AdamW leaves parameters without a gradient untouched: no update, no moment or weight-decay change
            optimizer.zero_grad(set_to_none=True)
            return
        raise NonFiniteLossError(
            f"non-finite gradients at step {trainer.global_step} in {len(bad)} parameter(s): {names} (finite loss "
            f"terms: {_terms(getattr(pl_module, 'last_terms', {})) or 'n/a'}); last good checkpoint: "
            f"{last_checkpoint(trainer)}. Lower the learning rate, or set optim.on_nonfinite=skip to skip such steps."
        )
