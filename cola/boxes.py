"""Box helpers shared by the data pipeline and the metrics (one place, so ``cola.data`` never imports
``cola.metrics`` for boxes).

Formats: ``xyxy`` = (x0, y0, x1, y1), ``cxcywh`` = (centre x, centre y, width, height), ``xywh`` = COCO
(x0, y0, width, height); any shape ``(..., 4)``, any units.

- Conversions are torchvision's :func:`torchvision.ops.box_convert` (bit-identical to the hand formulas they
  replace: ``cx - 0.5 w`` equals ``cx - w / 2`` exactly in floating point; tests/metrics/test_metrics.py checks it).
- :func:`box_iou_xyxy` and :func:`generalized_box_iou_xyxy` stay hand-written: torchvision's ``box_iou`` /
  ``generalized_box_iou`` score *all pairs* (an (N, M) matrix, where the metrics and losses need box ``i``
  against box ``i``), give an inverted box a negative area and return NaN for two zero-area boxes; ours are
  element-wise, clamp inverted boxes to area 0 and never return NaN. On valid boxes they equal the diagonal of
  torchvision's result (tests/metrics/test_metrics.py).
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert

__all__ = [
    "EPS",
    "box_cxcywh_to_xyxy",
    "box_iou_xyxy",
    "box_xywh_to_xyxy",
    "box_xyxy_to_cxcywh",
    "clip_boxes_xyxy",
    "generalized_box_iou_xyxy",
]

# Divisions by an area use max(area, EPS): a degenerate box never produces NaN or inf.
EPS = 1e-9


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) centre x, centre y, width, height -> (..., 4) x0, y0, x1, y1 (same units)."""
    return box_convert(boxes, "cxcywh", "xyxy")


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) x0, y0, x1, y1 -> (..., 4) centre x, centre y, width, height (same units)."""
    return box_convert(boxes, "xyxy", "cxcywh")


def box_xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) COCO x0, y0, width, height -> (..., 4) x0, y0, x1, y1 (same units)."""
    return box_convert(boxes, "xywh", "xyxy")


def _check_boxes(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.shape[-1:] != (4,):
        raise ValueError(
            f"{name} expects two (..., 4) xyxy box tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _area(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyxy -> (...,) area; an inverted box (x1 < x0 or y1 < y0) has area 0."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _intersection_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lt = torch.maximum(a[..., :2], b[..., :2])  # (..., 2)
    rb = torch.minimum(a[..., 2:], b[..., 2:])  # (..., 2)
    wh = (rb - lt).clamp(min=0)  # (..., 2)
    inter = wh[..., 0] * wh[..., 1]  # (...)
    return inter, _area(a) + _area(b) - inter


def box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of two sets of boxes.

    Args:
        a: (..., 4) x0, y0, x1, y1.
        b: (..., 4) x0, y0, x1, y1, same shape as ``a``.

    Returns:
        (...) IoU in [0, 1]; 0 where the union is empty (two zero-area boxes), never NaN.

    Raises:
        ValueError: if the shapes differ or the last dimension is not 4.
    """
    _check_boxes("box_iou_xyxy", a, b)
    inter, union = _intersection_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=EPS), torch.zeros_like(union))


def generalized_box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise generalised IoU (Rezatofighi et al., CVPR 2019): IoU - (hull - union) / hull.

    Args:
        a: (..., 4) x0, y0, x1, y1.
        b: (..., 4) x0, y0, x1, y1, same shape as ``a``.

    Returns:
        (...) GIoU in [-1, 1]; 0 for two identical zero-area boxes, never NaN. ``1 - giou`` is the GIoU loss.

    Raises:
        ValueError: if the shapes differ or the last dimension is not 4.
    """
    _check_boxes("generalized_box_iou_xyxy", a, b)
    inter, union = _intersection_union(a, b)
    iou = inter / union.clamp(min=EPS)
    hull_wh = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0)  # (..., 2)
    hull = hull_wh[..., 0] * hull_wh[..., 1]  # (...)
    return iou - (hull - union) / hull.clamp(min=EPS)


def clip_boxes_xyxy(boxes: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
    """Clips (B, 4) xyxy boxes to [0, w] x [0, h] of each image; ``image_sizes`` is (B, 2) as (h, w).

    Raises:
        ValueError: ``image_sizes`` is not (B, 2).
    """
    if image_sizes.shape != (boxes.shape[0], 2):
        raise ValueError(
            f"image_sizes must be (B, 2) as (h, w) with B = {boxes.shape[0]}, got {tuple(image_sizes.shape)}"
        )
    h, w = image_sizes.to(boxes).unbind(-1)  # (B,), (B,)
    limit = torch.stack([w, h, w, h], dim=-1)  # (B, 4)
    return torch.minimum(boxes.clamp(min=0), limit)
