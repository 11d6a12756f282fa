"""AVSBench metrics (docs/metrics.md#avs): per-video mIoU and the max-over-thresholds F-score (beta^2 = 0.3).

Both take ``(V, F, H, W)`` logits and masks, one row per video (the official evaluation runs one video per
batch); the sigmoid is applied inside. Their states are sums of per-video scores and a count of videos, so the
result does not depend on how videos are batched or spread over processes.

Both accept an optional ``frame_mask`` (V, F) bool: frames where it is False have no ground truth and are
left out (S4 training clips annotate frame 1 only; ``cola.data.avs`` batches carry it as ``mask_valid``).
A video without any valid frame is skipped. Val and test annotate every frame, so evaluation needs no mask.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from cola.dicts import check_choice

EMPTY_VIDEO_CHOICES = ("skip", "zero")


def _check_inputs(
    name: str, logits: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates the inputs; returns the target as bool and the frame mask as (V, F) bool (all True if None)."""
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(
            f"{name} expects logits and target of the same shape (V, F, H, W), got logits {tuple(logits.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if frame_mask is None:
        frame_mask = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    elif frame_mask.shape != logits.shape[:2] or frame_mask.dtype != torch.bool:
        raise ValueError(
            f"{name} expects frame_mask as a (V, F) = {tuple(logits.shape[:2])} bool tensor, got shape "
            f"{tuple(frame_mask.shape)} dtype {frame_mask.dtype}"
        )
    if target.dtype != torch.bool:
        if target.numel() and not ((target == 0) | (target == 1)).all():
            raise ValueError(f"{name} expects a bool or 0/1 target, got other values (dtype {target.dtype})")
        target = target != 0
    return target.to(logits.device), frame_mask.to(logits.device)


class AVSMIoU(Metric):
    """AVSBench mIoU (``miou``).

    Per frame, the IoU of ``sigmoid(logit) > 0.5`` with the mask; a frame with an empty ground truth scores
    true-negative pixels / all pixels (as AVSBench's ``mask_iou``); frames are averaged within a video, then
    videos are averaged. Unlike the official code, the ratio has no ``1e-7`` in the denominator (a perfect
    frame scores exactly 1). ``compute()`` returns 0 before any video was seen.

    ``update(logits, target, frame_mask=None)``: ``logits`` and ``target`` (V, F, H, W), ``frame_mask`` (V, F)
    bool (see the module docstring).
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("video_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None) -> None:
        """Adds V videos: ``logits``/``target`` (V, F, H, W), optional ``frame_mask`` (V, F) bool."""
        gt, valid = _check_inputs("AVSMIoU", logits, target, frame_mask)
        pred = torch.sigmoid(logits.detach().float()) > 0.5  # (V, F, H, W)
        inter = (pred & gt).flatten(2).sum(-1).double()  # (V, F)
        union = (pred | gt).flatten(2).sum(-1).double()  # (V, F)
        true_neg = (~pred & ~gt).flatten(2).sum(-1).double()  # (V, F)
        empty = ~gt.flatten(2).any(-1)  # (V, F)
        num_pixels = gt.shape[-2] * gt.shape[-1]
        # a non-empty ground truth makes the union positive; the clamp only guards the unused branch
        iou = torch.where(empty, true_neg / num_pixels, inter / union.clamp(min=1))  # (V, F)
        frames = valid.sum(1)  # (V,)
        has_frames = frames > 0
        per_video = (iou * valid).sum(1) / frames.clamp(min=1)  # (V,)
        self.video_sum += per_video[has_frames].sum().to(self.video_sum)
        self.videos += has_frames.sum().to(self.videos)

    def compute(self) -> torch.Tensor:
        return (self.video_sum / self.videos.clamp(min=1)).float()


def _f_curves(probs: torch.Tensor, gt: torch.Tensor, thresholds: torch.Tensor, beta2: float) -> torch.Tensor:
    """F-measure at every threshold for each row (a frame) of flattened probabilities.

    Foreground at threshold ``t_i`` is ``prob >= t_i``. Instead of a (T, P) comparison per frame, each pixel is
    put in the bin of the number of thresholds ``<= prob``; a pixel is foreground at threshold ``i`` exactly when
    its bin is ``> i``, so the predicted and true-positive counts at all thresholds are reverse cumulative sums
    of two histograms. Counts are exact in float64.

    Args:
        probs: (N, P) probabilities, same dtype as ``thresholds``.
        gt: (N, P) bool ground truth.
        thresholds: (T,) increasing thresholds.
        beta2: the F-measure's beta^2.

    Returns:
        (N, T) float64 F-measure; NaN (no prediction and no true positive) set to 0.
    """
    num_bins = thresholds.numel() + 1
    bins = torch.searchsorted(thresholds, probs.contiguous(), right=True)  # (N, P) in [0, T]
    zeros = torch.zeros(probs.shape[0], num_bins, dtype=torch.float64, device=probs.device)  # (N, T + 1)
    hist_pred = zeros.scatter_add(1, bins, torch.ones_like(probs, dtype=torch.float64))  # (N, T + 1)
    hist_tp = zeros.scatter_add(1, bins, gt.double())  # (N, T + 1)
    n_pred = hist_pred.flip(-1).cumsum(-1).flip(-1)[:, 1:]  # (N, T): pixels with bin > i
    tp = hist_tp.flip(-1).cumsum(-1).flip(-1)[:, 1:]  # (N, T)
    precision = tp / (n_pred + 1e-20)  # (N, T)
    recall = tp / (gt.sum(-1, keepdim=True).double() + 1e-20)  # (N, T)
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0)


class AVSFScore(Metric):
    """AVSBench F-score (``fscore``).

    For each frame with a non-empty mask, precision and recall of ``sigmoid(logit) >= t`` at ``num_thresholds``
    thresholds ``t = linspace(0, 1 - 1e-10)``: P = TP / (sum pred + 1e-20), R = TP / (sum gt + 1e-20),
    F = (1 + beta2) P R / (beta2 P + R), NaN set to 0. Per video, the F-curves of its non-empty frames are
    averaged and the maximum over thresholds is taken; the result is the mean over videos. Probabilities and
    thresholds are float32 as in the official evaluation (so the last threshold rounds to exactly 1.0);
    counts and ratios are float64.

    A video whose (valid) frames all have empty masks has no F-curve: ``empty_video="skip"`` (default,
    docs/metrics.md#avs) leaves it out, ``"zero"`` counts it as 0, which is what the official evaluation does.
    ``compute()`` returns 0 before any video was counted.

    ``update(logits, target, frame_mask=None)``: ``logits`` and ``target`` (V, F, H, W), ``frame_mask`` (V, F)
    bool (see the module docstring).

    Args:
        beta2: beta^2 of the F-measure (AVSBench: 0.3, weighting precision more than recall).
        num_thresholds: number of thresholds (AVSBench: 255).
        empty_video: ``skip`` or ``zero``, see above.
        frames_per_chunk: frames processed at once; bounds memory to about 24 bytes x chunk x H x W.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        beta2: float = 0.3,
        num_thresholds: int = 255,
        empty_video: str = "skip",
        frames_per_chunk: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("empty_video", empty_video, EMPTY_VIDEO_CHOICES)
        if beta2 <= 0:
            raise ValueError(f"beta2 must be > 0, got {beta2}")
        if num_thresholds < 1:
            raise ValueError(f"num_thresholds must be >= 1, got {num_thresholds}")
        if frames_per_chunk < 1:
            raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
        self.beta2 = beta2
        self.num_thresholds = num_thresholds
        self.empty_video = empty_video
        self.frames_per_chunk = frames_per_chunk
        self.add_state("video_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("videos", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def thresholds(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(num_thresholds,) float32 ``linspace(0, 1 - 1e-10)``, the official grid."""
        return torch.linspace(0, 1 - 1e-10, self.num_thresholds, dtype=torch.float32, device=device)

    def update(self, logits: torch.Tensor, target: torch.Tensor, frame_mask: torch.Tensor | None = None) -> None:
        """Adds V videos: ``logits``/``target`` (V, F, H, W), optional ``frame_mask`` (V, F) bool."""
        gt, valid = _check_inputs("AVSFScore", logits, target, frame_mask)
        num_videos, num_frames = logits.shape[:2]
        probs = torch.sigmoid(logits.detach().float()).flatten(2).flatten(0, 1)  # (V * F, H * W)
        gt = gt.flatten(2).flatten(0, 1)  # (V * F, H * W)
        used = (valid.flatten() & gt.any(-1)).double()  # (V * F,): valid frames with a non-empty mask
        thresholds = self.thresholds(probs.device)
        curves = torch.zeros(num_videos * num_frames, self.num_thresholds, dtype=torch.float64, device=probs.device)
        for start in range(0, num_videos * num_frames, self.frames_per_chunk):
            rows = slice(start, start + self.frames_per_chunk)
            curves[rows] = _f_curves(probs[rows], gt[rows], thresholds, self.beta2)  # (chunk, T)
        curves = (curves * used[:, None]).view(num_videos, num_frames, self.num_thresholds)  # (V, F, T)
        used = used.view(num_videos, num_frames)  # (V, F)
        frames = used.sum(1)  # (V,)
        best = (curves.sum(1) / frames.clamp(min=1)[:, None]).amax(-1)  # (V,)
        if self.empty_video == "zero":
            counted = valid.any(1)  # every video with ground truth; one without a non-empty frame adds 0
        else:
            counted = frames > 0
        self.video_sum += best[frames > 0].sum().to(self.video_sum)
        self.videos += counted.sum().to(self.videos)

    def compute(self) -> torch.Tensor:
        return (self.video_sum / self.videos.clamp(min=1)).float()
