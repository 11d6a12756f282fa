"""How cross-modal inputs reach adapter layers: conditions (CoLA) and contexts (MokA), set and cleared."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .layers import CoLALinear, MoKALinear


def set_conditions(layers: Iterable[nn.Module], condition) -> None:
    """Hands one (B, d_c) condition to every CoLA layer of ``layers`` (others are ignored)."""
    for layer in layers:
        if isinstance(layer, CoLALinear):
            layer.set_condition(condition)


def clear_conditions(model: nn.Module) -> None:
    """Clears every stored condition and context, so no tensor of a past batch stays referenced."""
    for m in model.modules():
        if isinstance(m, CoLALinear):
            m.set_condition(None)
        elif isinstance(m, MoKALinear):
            m.set_context(None)
