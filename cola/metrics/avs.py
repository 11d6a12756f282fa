"""AVSBench metrics (SPEC §8): per-video mIoU and the max-over-thresholds F-score (beta^2 = 0.3).

Inputs are ``(V, F, H, W)`` logits and masks, one row per video; the sigmoid is applied inside. States are
per-video sums, so results do not depend on how videos are batched.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def _check(name: str, logits: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None) -> None:
    if logits.ndim != 4:
        raise ValueError(f"{name} expects (V, F, H, W) logits, got {tuple(logits.shape)}")
    if logits.shape != target.shape:
        raise ValueError(f"{name}: logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
    if frame_mask is not None and frame_mask.shape != logits.shape[:2]:
        raise ValueError(f"{name}: frame_mask shape {tuple(frame_mask.shape)} != (V, F) {tuple(logits.shape[:2])}")


class AVSMIoU(Metric):
    """AVSBench mIoU: per frame, IoU of sigmoid(logit) > 0.5 with the mask; a frame with an empty ground truth
    scores true-negative pixels / all pixels; mean over a video's frames, then over videos.

    ``update(logits, target, frame_mask=None)``: ``frame_mask`` (V, F) bool leaves out frames without a
    ground truth (S4 train clips annotate frame 1 only).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("video_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None) -> None:
        _check("AVSMIoU", logits, target, frame_mask)
        pred = torch.sigmoid(logits.float()) > 0.5
        gt = target.bool()
        inter = (pred & gt).flatten(2).sum(-1).double()  # (V, F)
        union = (pred | gt).flatten(2).sum(-1).double()
        empty = gt.flatten(2).sum(-1) == 0
        tn = (~pred & ~gt).flatten(2).sum(-1).double()
        pixels = float(gt.shape[-1] * gt.shape[-2])
        iou = torch.where(empty, tn / pixels, inter / union.clamp(min=1))  # (V, F)
        valid = torch.ones_like(empty) if frame_mask is None else frame_mask.bool()
        n = valid.sum(1)
        has = n > 0
        per_video = (iou * valid).sum(1)[has] / n[has]
        self.video_sum += per_video.sum()
        self.videos += has.sum()

    def compute(self) -> torch.Tensor:
        return (self.video_sum / self.videos.clamp(min=1)).float()


class AVSFScore(Metric):
    """AVSBench F-score: for each frame with a non-empty mask, precision and recall at ``num_thresholds``
    thresholds ``linspace(0, 1 - 1e-10)`` on sigmoid probabilities (foreground = prob >= threshold),
    F = (1 + b2) P R / (b2 P + R) (NaN -> 0); per video the F-curves of its non-empty frames are averaged and
    the maximum over thresholds is taken; the result is the mean over videos.

    A video with no non-empty frame is skipped (``empty_video="skip"``, default) or counts as 0
    (``"zero"``, what the official evaluation does).
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, beta2: float = 0.3, num_thresholds: int = 255, empty_video: str = "skip", **kwargs) -> None:
        super().__init__(**kwargs)
        if empty_video not in ("skip", "zero"):
            raise ValueError(f"empty_video must be one of ['skip', 'zero'], got {empty_video!r}")
        self.beta2, self.num_thresholds, self.empty_video = beta2, num_thresholds, empty_video
        self.add_state("video_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def _frame_curve(self, prob: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        p = prob.flatten()
        g = gt.flatten()
        # Sort once: the count of predictions >= t (and true positives among them) for every threshold.
        order = torch.argsort(p, descending=True)
        ps, gs = p[order], g[order].double()
        tp_cum = torch.cumsum(gs, 0)
        # number of pixels with prob >= t: position of t in the descending list
        n_pos = torch.searchsorted(-ps, -thresholds, right=True)  # (T,)
        tp = torch.where(n_pos > 0, tp_cum[(n_pos - 1).clamp(min=0)], torch.zeros_like(thresholds, dtype=torch.float64))
        precision = tp / (n_pos.double() + 1e-20)
        recall = tp / (gs.sum() + 1e-20)
        f = (1 + self.beta2) * precision * recall / (self.beta2 * precision + recall)
        return torch.nan_to_num(f, nan=0.0)

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        _check("AVSFScore", logits, target, None)
        probs = torch.sigmoid(logits.float())
        gt = target.bool()
        thresholds = torch.linspace(0, 1 - 1e-10, self.num_thresholds, device=probs.device, dtype=probs.dtype)
        for v in range(probs.shape[0]):
            curves = [
                self._frame_curve(probs[v, f], gt[v, f], thresholds) for f in range(probs.shape[1]) if gt[v, f].any()
            ]
            if curves:
                self.video_sum += torch.stack(curves).mean(0).max().to(self.video_sum.device)
                self.videos += 1
            elif self.empty_video == "zero":
                self.videos += 1

    def compute(self) -> torch.Tensor:
        return (self.video_sum / self.videos.clamp(min=1)).float()
