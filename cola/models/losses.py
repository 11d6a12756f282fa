"""Grounding losses: box L1 + GIoU (REC) and mask sigmoid focal + Dice (RES), each averaged over the batch.

With B samples, predicted boxes b and targets b* in normalised (cx, cy, w, h), mask logits z and targets t
over P pixels, and p = sigmoid(z):

- ``l1``    = 1/B Σ_i ||b_i - b*_i||_1 (summed over the four coordinates, as DETR/TransVG);
- ``giou``  = 1/B Σ_i (1 - GIoU(xyxy(b_i), xyxy(b*_i)));
- ``focal`` = 1/B Σ_i 1/P Σ_p -α_t (1 - p_t)^γ log(p_t), with p_t = p if t = 1 else 1 - p and
  α_t = α if t = 1 else 1 - α (Lin et al., 2017). The sigmoid is applied ONCE, to logits: the official CoLA
  code passes sigmoid probabilities into a loss that applies the sigmoid again
  (docs/official_settings.md#deliberate-differences);
- ``dice``  = 1/B Σ_i [1 - (2 Σ_p p t + 1) / (Σ_p p + Σ_p t + 1)] (Milletari et al., 2016; +1 smoothing).
"""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as _tv_sigmoid_focal_loss

__all__ = ["box_losses", "dice_loss", "sigmoid_focal_loss"]


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: prediction shape {tuple(a.shape)} != target shape {tuple(b.shape)}")


def box_losses(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor) -> dict[str, torch.Tensor]:
    """L1 and GIoU losses of normalised (cx, cy, w, h) boxes.

    Args:
        pred_cxcywh: predicted boxes, (B, 4), normalised to [0, 1].
        target_cxcywh: target boxes, (B, 4), same frame.

    Returns:
        ``{"l1": ..., "giou": ...}``, 0-dim tensors averaged over the batch.
    """
    _check_same_shape("box_losses", pred_cxcywh, target_cxcywh)
    if pred_cxcywh.ndim != 2 or pred_cxcywh.shape[-1] != 4:
        raise ValueError(f"box_losses expects boxes of shape (B, 4), got {tuple(pred_cxcywh.shape)}")
    pred, target = pred_cxcywh.float(), target_cxcywh.float()
    l1 = (pred - target).abs().sum(dim=-1).mean()  # (B, 4) -> ()
    pred_xyxy = box_convert(pred, "cxcywh", "xyxy")  # (B, 4)
    target_xyxy = box_convert(target, "cxcywh", "xyxy")
    giou = generalized_box_iou_loss(pred_xyxy, target_xyxy, reduction="mean")  # 1 - GIoU, paired
    return {"l1": l1, "giou": giou}


def sigmoid_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Binary focal loss on LOGITS (sigmoid applied once), mean over pixels, then over the batch.

    Args:
        logits: (B, ...) raw mask logits.
        target: (B, ...) 0/1 targets, same shape.
        alpha: weight of the positive class (negatives get 1 - alpha); a negative value disables it.
        gamma: focusing exponent.

    Returns:
        0-dim tensor.
    """
    _check_same_shape("sigmoid_focal_loss", logits, target)
    per_pixel = _tv_sigmoid_focal_loss(logits.float(), target.float(), alpha=alpha, gamma=gamma, reduction="none")
    return per_pixel.flatten(1).mean(dim=1).mean()  # (B, P) -> (B,) -> ()


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss with +1 smoothing on sigmoid(logits), mean over the batch.

    Args:
        logits: (B, ...) raw mask logits.
        target: (B, ...) 0/1 targets, same shape.

    Returns:
        0-dim tensor.
    """
    _check_same_shape("dice_loss", logits, target)
    probs = logits.float().sigmoid().flatten(1)  # (B, P)
    target = target.float().flatten(1)  # (B, P)
    numerator = 2 * (probs * target).sum(dim=1)  # (B,)
    denominator = probs.sum(dim=1) + target.sum(dim=1)  # (B,)
    return (1 - (numerator + 1) / (denominator + 1)).mean()
