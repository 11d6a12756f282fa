"""AVE: audio-visual event classification of every second of a 10-s video (docs/metrics.md#tasks).

The dual encoder runs once per (frame t, audio second t) pair: the (B, T) videos x seconds are flattened into
B * T samples, the vision stream on ``{"pixel_values": (B*T, 3, S, S)}`` and the audio stream on
``{"input_values": (B*T, T_f, 128)}``. Each stream is pooled (``pooling``: the CLS token, as the official code, or the mean of the
content tokens), and :class:`cola.models.heads.av.AVEHead` fuses the pair, mixes the T seconds with a small
temporal module and predicts 29 logits per second. ``temporal="official"`` swaps in exactly the official head
(``Linear(d_v + d_a, 512) -> Linear(512, 29)`` on the concatenated [vision; audio] pooled tokens of each second,
no activation, no temporal mixing); pair it with ``loss="softmax_bce"`` (and ``pooling="cls"``) for the
official setting.

Loss: ``loss="ce"`` (default), the cross-entropy of every second, averaged over all B * T seconds (optional
``label_smoothing``). The official code (``audio_visual/ave/CoLA/main_trans.py``) takes a softmax and applies
``nn.BCELoss`` against one-hot targets, averaged over the B * T * 29 entries; ``loss="softmax_bce"`` reproduces
it. Both push the same softmax towards the label; CE on logits is the numerically stable standard (the
official BCE clamps log(0) at -100).

Metric ``acc`` (docs/metrics.md#ave): correctly classified seconds / all seconds of the split
(:class:`cola.metrics.SegmentAccuracy`, micro accuracy over the flattened (B * T,) seconds).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cola.dicts import check_choice
from cola.metrics import SegmentAccuracy
from cola.models.heads.av import POOLING_CHOICES, AVEHead, pool_stream

from .base import DualStreamTask

log = logging.getLogger(__name__)

__all__ = ["AVEClassificationTask"]

LOSSES = ("ce", "softmax_bce")


def _flatten_seconds(x: torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    """(B, T, ...) -> (B * T, ...), checking the rank of the per-video layout."""
    if x.ndim != ndim:
        raise ValueError(f"batch[{name!r}] must have {ndim} dims (B, T, ...), got shape {tuple(x.shape)}")
    return x.flatten(0, 1)


class AVEClassificationTask(DualStreamTask):
    """Per-second AVE classification on the dual encoder (a vision and an audio stream).

    Args:
        encoder: a :class:`cola.models.DualEncoder` with a "vision" and an "audio" tower.
        d_model: width of the fused features and of the temporal module (not used by ``temporal=official``).
        temporal: ``gru`` | ``transformer`` | ``none`` (each second alone, same fusion and classifier) |
            ``official`` (exactly the official head: two linear layers, 512 wide in between, no activation,
            each second alone; :class:`cola.models.heads.av.AVEHead`).
        temporal_layers: layers of the temporal module.
        temporal_heads: attention heads of ``temporal=transformer``.
        num_classes: classes per second (29 = 28 events + background).
        pooling: ``cls`` (official) or ``mean``: how each stream's final tokens become one vector.
        dropout: dropout of the head (the official head has none).
        loss: ``ce`` (cross-entropy) or ``softmax_bce`` (the official softmax + BCE on one-hot targets).
        label_smoothing: label smoothing of ``loss=ce``.
        **base_kwargs: optimisation, schedule, splits and checkpoint options of :class:`DualStreamTask`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        d_model: int = 256,
        temporal: str = "gru",
        temporal_layers: int = 1,
        temporal_heads: int = 4,
        num_classes: int = 29,
        pooling: str = "cls",
        dropout: float = 0.1,
        loss: str = "ce",
        label_smoothing: float = 0.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(encoder, **base_kwargs)
        check_choice("task.module.pooling", pooling, POOLING_CHOICES)
        check_choice("task.module.loss", loss, LOSSES)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"task.module.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        if loss == "softmax_bce" and label_smoothing:
            raise ValueError("task.module.label_smoothing applies to loss=ce only")
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.loss_kind = loss
        self.label_smoothing = float(label_smoothing)
        self.head = AVEHead(
            encoder.towers["vision"].hidden_size,
            encoder.towers["audio"].hidden_size,
            num_classes=self.num_classes,
            d_model=d_model,
            temporal=temporal,
            temporal_layers=temporal_layers,
            heads=temporal_heads,
            dropout=dropout,
        )

    def encoder_inputs(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Vision and audio inputs by stream, one sample per (video, second)."""
        pixels = _flatten_seconds(batch["pixel_values"], "pixel_values", 5)  # (B*T, 3, S, S)
        audio = _flatten_seconds(batch["input_values"], "input_values", 4)  # (B*T, T_f, 128)
        if pixels.shape[0] != audio.shape[0]:
            raise ValueError(
                f"pixel_values {tuple(batch['pixel_values'].shape[:2])} and input_values "
                f"{tuple(batch['input_values'].shape[:2])} disagree on (B, T)"
            )
        return {"vision": {"pixel_values": pixels}, "audio": {"input_values": audio}}

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-second logits.

        Args:
            batch: the AVE batch (``pixel_values`` (B, T, 3, S, S), ``input_values`` (B, T, T_f, 128), ...).

        Returns:
            ``logits`` (B, T, num_classes).
        """
        B, T = batch["pixel_values"].shape[:2]
        enc = self.encoder(self.encoder_inputs(batch), rows_per_sample=T)  # T seconds per video
        vision = pool_stream(enc.tokens["vision"], enc.num_prefix["vision"], self.pooling).view(B, T, -1)  # (B, T, Ca)
        audio = pool_stream(enc.tokens["audio"], enc.num_prefix["audio"], self.pooling).view(B, T, -1)  # (B, T, Cb)
        return {"logits": self.head(vision, audio)}  # (B, T, num_classes)

    def compute_loss(
        self, out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over all seconds of the batch; returns (loss, terms)."""
        logits = out["logits"].flatten(0, 1).float()  # (B*T, C)
        labels = batch["labels"].flatten()  # (B*T,)
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels {tuple(batch['labels'].shape)} do not match logits {tuple(out['logits'].shape)}")
        if self.loss_kind == "ce":
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        else:
            target = F.one_hot(labels, self.num_classes).to(logits.dtype)  # (B*T, C)
            loss = F.binary_cross_entropy(logits.softmax(dim=-1), target)
        return loss, {self.loss_kind: loss.detach()}

    def make_metrics(self) -> dict[str, nn.Module]:
        return {"acc": SegmentAccuracy(num_classes=self.num_classes)}

    def update_metrics(
        self, metrics: dict[str, nn.Module], out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> None:
        metrics["acc"].update(out["logits"].detach(), batch["labels"])
