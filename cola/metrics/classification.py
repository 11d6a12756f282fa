"""AVE segment accuracy (docs/metrics.md#ave): correctly classified seconds / all seconds of the split.

A thin layer over torchmetrics' ``MulticlassAccuracy(average="micro")`` that takes the task's per-second
layout, (B, T, C) logits and (B, T) class indices, so callers cannot mix up the class and time axes.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy


class SegmentAccuracy(MulticlassAccuracy):
    """Micro accuracy over every segment (second) of every video: argmax over classes vs the label.

    ``update(logits, target)``: ``logits`` (B, T, C) scores (logits or probabilities), ``target`` (B, T)
    integer class indices in [0, C). Equal to ``MulticlassAccuracy(num_classes, average="micro")`` on the
    flattened (B * T, C) scores; sum states, so batching does not change the result.

    Args:
        num_classes: C (AVE: 29, 28 events + background).
        **kwargs: passed to ``MulticlassAccuracy`` (e.g. ``ignore_index``); ``average`` is fixed to micro.
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        if "average" in kwargs and kwargs["average"] != "micro":
            raise ValueError(f"SegmentAccuracy is a micro average over segments, got average={kwargs['average']!r}")
        kwargs["average"] = "micro"
        super().__init__(num_classes=num_classes, **kwargs)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        """Adds a batch: ``logits`` (B, T, C), ``target`` (B, T) class indices."""
        if logits.ndim != 3 or target.shape != logits.shape[:2] or logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"SegmentAccuracy expects logits (B, T, C={self.num_classes}) and target (B, T), got logits "
                f"{tuple(logits.shape)} and target {tuple(target.shape)}"
            )
        super().update(logits.detach().flatten(0, 1), target.flatten())  # (B * T, C), (B * T,)
