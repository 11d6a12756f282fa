"""Grounding metrics (SPEC §8): box accuracy at an IoU threshold, mask mIoU and oIoU, plus box helpers.

All three are ``torchmetrics.Metric`` subclasses with sum states, so results do not depend on how samples are
batched and they reduce correctly under DDP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

EPS = 1e-9


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_xyxy_to_cxcywh(b: torch.Tensor) -> torch.Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def _inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area_a + area_b - inter, area_a, area_b


def box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise IoU of (..., 4) xyxy boxes; 0 where the union is empty (never NaN)."""
    inter, union, _, _ = _inter_union(a, b)
    return torch.where(union > 0, inter / union.clamp(min=EPS), torch.zeros_like(union))


def generalized_box_iou_xyxy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise generalised IoU (Rezatofighi et al., 2019) of (..., 4) xyxy boxes, in [-1, 1]."""
    inter, union, _, _ = _inter_union(a, b)
    iou = inter / union.clamp(min=EPS)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull.clamp(min=EPS)


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: prediction shape {tuple(a.shape)} != target shape {tuple(b.shape)}")


class BoxAccuracy(Metric):
    """Fraction of samples whose predicted box has IoU >= ``iou_threshold`` with the target (``acc@0.5``).

    ``update(pred_boxes, target_boxes, image_sizes=None)``: (B, 4) xyxy in one coordinate frame. The caller
    clips predictions to the image (as official); passing ``image_sizes`` (B, 2) as (h, w) clips here too.
    A zero-area target scores IoU 0, a miss.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.iou_threshold = iou_threshold
        self.add_state("correct", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self, pred_boxes: torch.Tensor, target_boxes: torch.Tensor, image_sizes: torch.Tensor | None = None
    ) -> None:
        _check_same_shape("BoxAccuracy", pred_boxes, target_boxes)
        if pred_boxes.ndim != 2 or pred_boxes.shape[-1] != 4:
            raise ValueError(f"BoxAccuracy expects (B, 4) xyxy boxes, got {tuple(pred_boxes.shape)}")
        pred = pred_boxes.float()
        if image_sizes is not None:
            h, w = image_sizes[:, 0:1].float(), image_sizes[:, 1:2].float()
            pred = torch.cat([pred[:, 0::2].clamp(min=0).minimum(w), pred[:, 1::2].clamp(min=0).minimum(h)], 1)[
                :, [0, 2, 1, 3]
            ]
        iou = box_iou_xyxy(pred, target_boxes.float())
        self.correct += (iou >= self.iou_threshold).sum().double()
        self.total += iou.numel()

    def compute(self) -> torch.Tensor:
        return (self.correct / self.total.clamp(min=1)).float()


def _as_list(x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        if x.ndim != 3:
            raise ValueError(f"masks must be (B, H, W) or a list of (H, W), got {tuple(x.shape)}")
        return list(x.unbind(0))
    return list(x)


def _mask_inter_union(probs, target, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    probs, target = _as_list(probs), _as_list(target)
    if len(probs) != len(target):
        raise ValueError(f"got {len(probs)} predicted masks for {len(target)} targets")
    inters, unions = [], []
    for p, t in zip(probs, target):
        _check_same_shape("mask metric", p, t)
        pred = p >= threshold
        gt = t.bool()
        inters.append((pred & gt).sum())
        unions.append((pred | gt).sum())
    return torch.stack(inters).double(), torch.stack(unions).double()


class MaskMIoU(Metric):
    """Mean over samples of IoU(prob >= threshold, target); empty prediction and empty target score 1.

    ``update(probs, target)``: (B, H, W) probabilities and 0/1 or bool targets, or lists of (H_i, W_i) tensors
    (grounding masks are evaluated at each image's original size).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs, target) -> None:
        inter, union = _mask_inter_union(probs, target, self.threshold)
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        self.iou_sum += iou.sum().to(self.iou_sum.device)
        self.count += iou.numel()

    def compute(self) -> torch.Tensor:
        return (self.iou_sum / self.count.clamp(min=1)).float()


class MaskOIoU(Metric):
    """Overall IoU: sum of intersections / sum of unions over the split (1.0 when every mask is empty)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.add_state("inter", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("union", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs, target) -> None:
        inter, union = _mask_inter_union(probs, target, self.threshold)
        self.inter += inter.sum().to(self.inter.device)
        self.union += union.sum().to(self.union.device)

    def compute(self) -> torch.Tensor:
        if self.union == 0:
            return torch.tensor(1.0)
        return (self.inter / self.union).float()
