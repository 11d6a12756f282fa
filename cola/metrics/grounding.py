"""Grounding metrics (docs/metrics.md#grounding): box accuracy at an IoU threshold, mask mIoU and oIoU.

- ``acc@0.5`` (:class:`BoxAccuracy`): fraction of samples whose predicted box has IoU >= 0.5 with the target.
- ``miou`` (:class:`MaskMIoU`): mean over samples of IoU(prob >= 0.5, target); empty prediction and empty
  target score 1.
- ``oiou`` (:class:`MaskOIoU`): sum of intersections / sum of unions over the split.

The metrics keep sum states only (``dist_reduce_fx="sum"``), so the result does not depend on how samples are
split into batches or processes. Masks may change size from one sample to the next (the official protocol
evaluates at each image's original resolution): pass lists of ``(H_i, W_i)`` tensors.

The box helpers live in :mod:`cola.boxes` (shared with the data pipeline) and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from cola.boxes import box_iou_xyxy, clip_boxes_xyxy

__all__ = ["BoxAccuracy", "MaskMIoU", "MaskOIoU"]

# Probabilities may leave [0, 1] by a rounding error after bilinear resizing; anything beyond this is a logit.
_PROB_TOL = 1e-3

MaskInput = torch.Tensor | Sequence[torch.Tensor]


class BoxAccuracy(Metric):
    """Fraction of samples whose predicted box has IoU >= ``iou_threshold`` with the target (``acc@0.5``).

    ``update(pred_boxes, target_boxes, image_sizes=None)`` takes (B, 4) x0, y0, x1, y1 boxes in one coordinate
    frame (the grounding task uses original-image pixels). As in the official evaluation, predictions are clipped
    to the image first; that is the caller's job (``cola.data.transforms.boxes_to_original`` does it), or pass
    ``image_sizes`` (B, 2) as (h, w) to clip to [0, w] x [0, h] here. The threshold is inclusive (IoU exactly 0.5
    is a hit) and IoU is computed in float64 so that the comparison is not decided by float32 rounding. A
    zero-area target counts, as a miss (IoU 0). ``compute()`` returns 0 before any sample was seen.

    Args:
        iou_threshold: IoU at or above which a prediction is correct, in [0, 1].
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.add_state("correct", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, pred_boxes: torch.Tensor, target_boxes: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> None:
        """Adds a batch: ``pred_boxes`` and ``target_boxes`` (B, 4) xyxy, optional ``image_sizes`` (B, 2) (h, w)."""
        if pred_boxes.shape != target_boxes.shape or pred_boxes.ndim != 2 or pred_boxes.shape[-1] != 4:
            raise ValueError(
                "BoxAccuracy expects pred_boxes and target_boxes of shape (B, 4) xyxy, got "
                f"pred_boxes {tuple(pred_boxes.shape)} and target_boxes {tuple(target_boxes.shape)}"
            )
        pred = pred_boxes.detach().double()  # (B, 4)
        if image_sizes is not None:
            pred = clip_boxes_xyxy(pred, image_sizes)
        iou = box_iou_xyxy(pred, target_boxes.detach().to(pred))  # (B,)
        self.correct += (iou >= self.iou_threshold).sum()
        self.total += iou.numel()

    def compute(self) -> torch.Tensor:
        return (self.correct / self.total.clamp(min=1)).float()


def _as_list(name: str, x: MaskInput) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        if x.ndim != 3:
            raise ValueError(
                f"{name} must be a (B, H, W) tensor or a list of (H, W) tensors, got shape {tuple(x.shape)}"
            )
        return list(x.unbind(0))
    items = list(x)
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}[{i}] must be an (H, W) tensor, got {shape}")
    return items


def _check_probs(name: str, probs: torch.Tensor) -> None:
    if probs.numel() and (probs.min() < -_PROB_TOL or probs.max() > 1 + _PROB_TOL):
        raise ValueError(
            f"{name} expects probabilities in [0, 1], got values in [{probs.min().item():.4g}, "
            f"{probs.max().item():.4g}]; apply sigmoid to logits first"
        )


def _binary_target(name: str, target: torch.Tensor) -> torch.Tensor:
    if target.dtype == torch.bool:
        return target
    if target.numel() and not ((target == 0) | (target == 1)).all():
        raise ValueError(f"{name} expects a bool or 0/1 target, got other values (dtype {target.dtype})")
    return target != 0


def _mask_intersection_union(
    name: str, probs: MaskInput, target: MaskInput, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample intersection and union (B,) float64 of ``probs >= threshold`` and the target."""
    if isinstance(probs, torch.Tensor) and isinstance(target, torch.Tensor):
        if probs.shape != target.shape or probs.ndim != 3:
            raise ValueError(
                f"{name} expects probs and target of the same shape (B, H, W), got probs {tuple(probs.shape)} "
                f"and target {tuple(target.shape)}"
            )
        _check_probs(name, probs)
        pred, gt = probs >= threshold, _binary_target(name, target).to(probs.device)  # (B, H, W) bool
        return (pred & gt).flatten(1).sum(-1).double(), (pred | gt).flatten(1).sum(-1).double()
    probs_list, target_list = _as_list(f"{name} probs", probs), _as_list(f"{name} target", target)
    if len(probs_list) != len(target_list):
        raise ValueError(f"{name} got {len(probs_list)} predicted masks for {len(target_list)} target masks")
    inters, unions = [], []
    for i, (p, t) in enumerate(zip(probs_list, target_list)):
        if p.shape != t.shape:
            raise ValueError(f"{name} sample {i}: probs shape {tuple(p.shape)} != target shape {tuple(t.shape)}")
        _check_probs(name, p)
        pred, gt = p >= threshold, _binary_target(name, t).to(p.device)  # (H, W) bool
        inters.append((pred & gt).sum())
        unions.append((pred | gt).sum())
    if not inters:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    return torch.stack(inters).double(), torch.stack(unions).double()


class _MaskMetric(Metric):
    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold

    def _intersection_union(self, probs: MaskInput, target: MaskInput) -> tuple[torch.Tensor, torch.Tensor]:
        inter, union = _mask_intersection_union(type(self).__name__, probs, target, self.threshold)
        return inter.to(self.device), union.to(self.device)


class MaskMIoU(_MaskMetric):
    """Mean over samples of IoU(prob >= ``threshold``, target) (``miou``).

    ``update(probs, target)``: ``probs`` (B, H, W) probabilities, ``target`` (B, H, W) bool or 0/1, or two
    lists of (H_i, W_i) tensors (sizes may differ between samples). A sample whose prediction and target are
    both empty scores 1. ``compute()`` returns 0 before any sample was seen.

    Args:
        threshold: a pixel is foreground where ``prob >= threshold``.
    """

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: MaskInput, target: MaskInput) -> None:
        """Adds a batch of (B, H, W) probabilities and targets, or lists of (H_i, W_i) tensors."""
        inter, union = self._intersection_union(probs, target)  # (B,), (B,)
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # (B,)
        self.iou_sum += iou.sum()
        self.count += iou.numel()

    def compute(self) -> torch.Tensor:
        return (self.iou_sum / self.count.clamp(min=1)).float()


class MaskOIoU(_MaskMetric):
    """Overall IoU over the split: sum of intersections / sum of unions (``oiou``).

    Same inputs as :class:`MaskMIoU`. Large objects weigh more than in mIoU. When every prediction and every
    target seen is empty (0 / 0) the result is 1, as an empty pair scores 1 in :class:`MaskMIoU`;
    ``compute()`` returns 0 before any sample was seen.

    Args:
        threshold: a pixel is foreground where ``prob >= threshold``.
    """

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(threshold, **kwargs)
        self.add_state("intersection", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: MaskInput, target: MaskInput) -> None:
        """Adds a batch of (B, H, W) probabilities and targets, or lists of (H_i, W_i) tensors."""
        inter, union = self._intersection_union(probs, target)  # (B,), (B,)
        self.intersection += inter.sum()
        self.union += union.sum()
        self.count += inter.numel()

    def compute(self) -> torch.Tensor:
        oiou = torch.where(self.union > 0, self.intersection / self.union.clamp(min=1), torch.ones_like(self.union))
        return torch.where(self.count > 0, oiou, torch.zeros_like(oiou)).float()
