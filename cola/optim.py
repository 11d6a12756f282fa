"""Optimiser and learning-rate schedule of the task modules, as ``_partial_`` configs the task fills.

``configs/train.yaml`` holds two ``_partial_: true`` nodes, built from the ``optim.*`` knobs by interpolation;
:func:`cola.harness.build_module` instantiates them and hands them to the task, whose
:meth:`~cola.tasks.base.DualStreamTask.configure_optimizers` fills them:

- ``optim.optimizer_cfg`` -> :func:`adam` (``optim.optimizer``: ``adamw`` | ``adam``), filled with the parameter
  groups (adapters / heads x decay / no decay, with the two learning rates; with ``optim.loraplus_ratio`` the B
  matrices of the adapters in a group of their own, LoRA+) and ``fused``;
- ``optim.scheduler_cfg`` -> :func:`warmup_schedule` (``optim.schedule``: ``cosine`` | ``poly`` | ``constant``
  after a linear warm-up), filled with the optimiser and the schedule's length (steps or epochs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from cola.dicts import check_choice

if TYPE_CHECKING:
    from cola.peft import Method

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
SCHEDULES = ("cosine", "poly", "constant")
INTERVALS = ("step", "epoch")
# the ``optim`` knobs the task module takes itself; the others fill the two partials by interpolation
TASK_KEYS = (
    "lr_adapters",
    "lr_heads",
    "weight_decay",
    "decay_1d",
    "schedule_interval",
    "on_nonfinite",
    "loraplus_ratio",
)


def check_options(optim: Mapping[str, Any]) -> None:
    """Checks the ``optim`` knobs whose bad values would otherwise surface only when training starts.

    Args:
        optim: the ``optim`` node as a plain mapping (``optimizer``, ``schedule``, ``schedule_interval``, ...).
    """
    check_choice("optim.optimizer", optim.get("optimizer", "adamw"), OPTIMIZERS)
    check_choice("optim.schedule", optim.get("schedule", "cosine"), SCHEDULES)
    check_choice("optim.schedule_interval", optim.get("schedule_interval", "step"), INTERVALS)
    check_loraplus_ratio(optim.get("loraplus_ratio"))


def check_loraplus_ratio(ratio: Any, method: Method | None = None) -> None:
    """``optim.loraplus_ratio`` is null or a positive number, and set only for a method with trained B matrices.

    Args:
        ratio: eta_B / eta_A (LoRA+, Hayou et al., 2024), or ``None`` (off).
        method: the run's :class:`cola.peft.Method` when known; one without ``up_projections`` (``frozen``,
            ``full``, VeRA's frozen B) has no B matrix to speed up.
    """
    if ratio is None:
        return
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"optim.loraplus_ratio must be a positive number (eta_B / eta_A) or null (off), got {ratio!r}")
    if method is not None and not method.up_projections:
        from cola.peft import METHODS

        with_b = ", ".join(n for n, m in METHODS.items() if m.up_projections)
        raise ValueError(
            f"optim.loraplus_ratio={ratio!r} needs adapter B matrices, but peft.method={method.name!r} has none; set "
            f"optim.loraplus_ratio=null or pick peft={with_b}"
        )


def adam(
    params: Iterable[Any],
    *,
    name: str = "adamw",
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` (``name=adamw``, decoupled weight decay) or ``torch.optim.Adam`` (``adam``: L2 added
    to the gradient; official AVE / AVS, with weight decay 0).

    Args:
        params: the parameter groups (each with its own ``lr`` and ``weight_decay``).
        name: ``adamw`` | ``adam`` (``optim.optimizer``).
        betas: Adam(W) betas.
        fused: torch's fused kernel (``None``: torch's default).
    """
    check_choice("optim.optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](params, betas=tuple(betas), fused=fused)


def lr_factor(
    step: int, total: int, *, schedule: str, warmup_ratio: float, poly_power: float, min_lr_ratio: float
) -> float:
    """The learning rate of ``step`` (0-based; an epoch under ``schedule_interval=epoch``) as a fraction of the peak.

    Linear warm-up over ``max(1, int(warmup_ratio * total))`` steps (none when ``warmup_ratio`` is 0), then
    ``cosine`` down to ``min_lr_ratio``, ``poly`` ``(1 - progress)^poly_power`` (official grounding: per epoch,
    no warm-up, power 0.9) or ``constant``.
    """
    warmup = max(1, int(warmup_ratio * total)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** poly_power
    return 1.0


def warmup_schedule(
    optimizer: torch.optim.Optimizer,
    *,
    total: int,
    schedule: str = "cosine",
    warmup_ratio: float = 0.05,
    poly_power: float = 0.9,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` of :func:`lr_factor`: linear warm-up, then ``schedule``, over ``total`` steps (or epochs).

    Hand-written rather than torch's ``LinearLR`` + ``CosineAnnealingLR`` / ``PolynomialLR`` in a
    ``SequentialLR``: those compute each learning rate from the previous one (chainable form), which drifts from
    this closed form in the last bits (and ``CosineAnnealingLR`` has no ``min_lr_ratio`` of the peak per group),
    so the runs recorded before would not repeat bit for bit. ``tests/tasks/test_optim.py`` pins the values per step.

    Args:
        optimizer: the optimiser whose groups' learning rates are scaled.
        total: the schedule's length in steps (``schedule_interval=step``) or epochs (``epoch``).
        schedule: ``cosine`` | ``poly`` | ``constant`` after the warm-up (``optim.schedule``).
        warmup_ratio: fraction of ``total`` spent warming up linearly; 0 = none.
        poly_power: exponent of the ``poly`` schedule.
        min_lr_ratio: final learning rate of ``cosine`` as a fraction of the peak.
    """
    check_choice("optim.schedule", schedule, SCHEDULES)
    shape = dict(schedule=schedule, warmup_ratio=warmup_ratio, poly_power=poly_power, min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, total, **shape))
