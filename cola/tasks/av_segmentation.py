"""AVS (AVSBench S4 / MS3): segment the sounding object(s) in each of a clip's 5 frames (docs/metrics.md#tasks).

Per frame k, the dual encoder runs on (frame k, audio second k): the (B, F) clips x frames are flattened into
B * F samples, the vision stream on the frames and the audio stream on the seconds. The outputs of
``decoder_layers`` vision blocks feed :class:`cola.models.heads.av.AVSMaskDecoder`, conditioned (FiLM) on the pooled audio token of the same second,
which predicts one mask logit per pixel at the input resolution.

Loss, on annotated frames only (``mask_valid``; S4 training clips annotate frame 1 only, and the official code
likewise scores only the first frame):

    loss = w_bce * BCE(logits, mask) + w_iou * (1 - softIoU(sigmoid(logits), mask))

BCE is averaged over the pixels of every valid frame; the soft IoU (Jaccard) loss per valid frame is
``1 - (sum p t + 1) / (sum p + sum t - sum p t + 1)`` (+1 smoothing, so an empty mask predicted empty scores 0),
averaged over the valid frames. The official CoLA AVS code trains with the BCE term alone
(``audio_visual/avs/CoLA/loss.py``, ``F1_IoU_BCELoss``); ``w_iou=0`` reproduces it.

Metrics (docs/metrics.md#avs): ``miou`` (:class:`cola.metrics.AVSMIoU`) and ``fscore`` (:class:`cola.metrics.AVSFScore`)
on (V, F, H, W) logits, one row per clip, restricted to valid frames (val/test annotate every frame).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cola.dicts import check_choice
from cola.metrics import AVSFScore, AVSMIoU
from cola.models.heads.av import POOLING_CHOICES, AVSMaskDecoder, default_decoder_layers, pool_stream

from .base import DualStreamTask

log = logging.getLogger(__name__)

__all__ = ["AVSSegmentationTask", "masked_mask_losses"]


def masked_mask_losses(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor
) -> tuple[dict[str, torch.Tensor], int]:
    """BCE and soft-IoU losses over the valid frames only.

    Args:
        logits: (B, F, H, W) mask logits.
        target: (B, F, H, W) 0/1 masks.
        valid: (B, F) bool, True where the frame has a ground-truth mask.

    Returns:
        ``({"bce": ..., "iou": ...}, number of valid frames)``. Without any valid frame both terms are 0 (still
        attached to the graph, so the step runs and changes nothing).
    """
    if logits.shape != target.shape or logits.ndim != 4:
        raise ValueError(f"mask logits {tuple(logits.shape)} and masks {tuple(target.shape)} must be (B, F, H, W)")
    if valid.shape != logits.shape[:2]:
        raise ValueError(f"mask_valid {tuple(valid.shape)} must be (B, F) = {tuple(logits.shape[:2])}")
    valid = valid.bool()
    n = int(valid.sum())
    if n == 0:
        zero = logits.sum() * 0.0
        return {"bce": zero, "iou": zero}, 0
    z = logits[valid].float().flatten(1)  # (K, H*W)
    t = target[valid].float().flatten(1)  # (K, H*W)
    bce = F.binary_cross_entropy_with_logits(z, t)  # mean over the K frames' pixels
    p = z.sigmoid()
    inter = (p * t).sum(dim=1)  # (K,)
    union = p.sum(dim=1) + t.sum(dim=1) - inter  # (K,)
    iou = (1 - (inter + 1) / (union + 1)).mean()
    return {"bce": bce, "iou": iou}, n


class AVSSegmentationTask(DualStreamTask):
    """Audio-visual segmentation on the dual encoder (a vision and an audio stream).

    Args:
        encoder: a :class:`cola.models.DualEncoder` with a "vision" and an "audio" tower.
        d_decoder: channels of the mask decoder.
        decoder_layers: vision block indices (negative from the end) fed to the decoder, any order; ``None`` =
            4 evenly spaced blocks ending at the last (12 blocks: [2, 5, 8, 11]).
        w_bce: weight of the BCE loss.
        w_iou: weight of the soft-IoU loss (0 = official CoLA AVS loss).
        pooling: ``cls`` (official) or ``mean``: the audio vector that conditions the decoder.
        **base_kwargs: optimisation, schedule, splits and checkpoint options of :class:`DualStreamTask`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        d_decoder: int = 128,
        decoder_layers: list[int] | None = None,
        w_bce: float = 1.0,
        w_iou: float = 1.0,
        pooling: str = "cls",
        **base_kwargs: Any,
    ) -> None:
        super().__init__(encoder, **base_kwargs)
        check_choice("task.module.pooling", pooling, POOLING_CHOICES)
        if w_bce < 0 or w_iou < 0 or w_bce + w_iou == 0:
            raise ValueError(f"task.module.w_bce and w_iou must be >= 0 and not both 0, got {w_bce} and {w_iou}")
        self.decoder_layers = self._resolve_layers(decoder_layers, encoder.towers["vision"].depth)
        self.w_bce, self.w_iou = float(w_bce), float(w_iou)
        self.pooling = pooling
        self.head = AVSMaskDecoder(
            encoder.towers["vision"].hidden_size,
            encoder.towers["audio"].hidden_size,
            num_levels=len(self.decoder_layers),
            num_prefix_tokens=int(encoder.towers["vision"].num_prefix_tokens),
            d_decoder=d_decoder,
        )

    @staticmethod
    def _resolve_layers(layers: list[int] | None, depth: int) -> list[int]:
        if layers is None:
            return default_decoder_layers(depth)
        if isinstance(layers, (str, int)) or len(layers) == 0:
            raise ValueError(
                f"task.module.decoder_layers must be a non-empty list of block indices or null, got {layers!r}"
            )
        out = []
        for v in layers:
            if isinstance(v, bool) or not isinstance(v, int) or not -depth <= v < depth:
                raise ValueError(
                    f"task.module.decoder_layers entries must be integers in [{-depth}, {depth}) for the "
                    f"{depth}-block vision tower, got {v!r}"
                )
            out.append(v % depth)
        if len(set(out)) != len(out):
            raise ValueError(f"task.module.decoder_layers repeats a block: {list(layers)} -> {out}")
        return sorted(out)  # shallow to deep

    def encoder_inputs(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Vision and audio inputs by stream, one sample per (clip, frame)."""
        pixels, audio = batch["pixel_values"], batch["input_values"]
        if pixels.ndim != 5 or audio.ndim != 4 or pixels.shape[:2] != audio.shape[:2]:
            raise ValueError(
                f"AVS batches need pixel_values (B, F, 3, S, S) and input_values (B, F, T, 128) with the same "
                f"(B, F), got {tuple(pixels.shape)} and {tuple(audio.shape)}"
            )
        return {"vision": {"pixel_values": pixels.flatten(0, 1)}, "audio": {"input_values": audio.flatten(0, 1)}}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Mask logits per frame.

        Args:
            batch: the AVS batch (``pixel_values`` (B, F, 3, S, S), ``input_values`` (B, F, T, 128), ...).

        Returns:
            ``mask_logits`` (B, F, S, S).
        """
        B, Fr, _, H, W = batch["pixel_values"].shape
        # only vision blocks are needed (audio blocks of another depth are not indexed)
        enc = self.encoder(
            self.encoder_inputs(batch), return_layers={"vision": self.decoder_layers}, rows_per_sample=Fr
        )
        audio = pool_stream(enc.tokens["audio"], enc.num_prefix["audio"], self.pooling)  # (B*F, Ca)
        logits = self.head(enc.layers["vision"], audio, (H, W))  # (B*F, H, W)
        return {"mask_logits": logits.view(B, Fr, H, W)}

    def compute_loss(
        self, out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted BCE + soft-IoU over the annotated frames; returns (loss, unweighted terms)."""
        terms, _ = masked_mask_losses(out["mask_logits"], batch["masks"], batch["mask_valid"])
        loss = self.w_bce * terms["bce"] + self.w_iou * terms["iou"]
        return loss, {k: v.detach() for k, v in terms.items()}

    def make_metrics(self) -> dict[str, nn.Module]:
        return {"miou": AVSMIoU(), "fscore": AVSFScore()}

    def update_metrics(
        self, metrics: dict[str, nn.Module], out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> None:
        logits = out["mask_logits"].detach().float()  # (V, F, H, W), one row per clip
        target, valid = batch["masks"], batch["mask_valid"].bool()
        metrics["miou"].update(logits, target, valid)
        metrics["fscore"].update(logits, target, valid)
