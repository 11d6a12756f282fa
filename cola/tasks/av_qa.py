"""Audio-visual question answering (MUSIC-AVQA) on three towers: vision, audio and text (docs/metrics.md#tasks).

Per question the batch holds T one-second segments of its video (a frame and a 1-s audio clip each) and the
tokenised question. The encoder runs the three streams in lockstep: vision ``{"pixel_values": (B*T, 3, S, S)}``
and audio ``{"input_values": (B*T, F, 128)}`` with one row per (question, segment), text ``{"input_ids",
"attention_mask"}`` with one row per question (B rows), and ``rows_per_sample={"vision": T, "audio": T, "text": 1}``
(the T consecutive vision and audio rows of a question belong together: conditions between them and the
question's text are matched by question). Each stream is pooled (``pooling``: the CLS token, as the official audio-visual CoLA code, or the
mean of the content tokens; the question's mean skips padding), and :class:`cola.models.heads.avqa.AVQAHead`
pools the segments (mean, or the question's attention), fuses and scores the answer vocabulary.

Loss: cross-entropy over the answers (optional ``label_smoothing``; a label of -1, an answer outside the train
vocabulary, only occurs in val/test and is ignored). Metrics (:class:`cola.metrics.AVQAAccuracy`): ``acc``,
``acc_audio``, ``acc_visual``, ``acc_audiovisual`` and ``acc_<modality>_<type>`` for the nine question types; a
type (or modality) with no question in a split is absent from that split's metrics (its key left out, with one
warning naming it), never NaN (:func:`cola.metrics.avqa.absent_keys`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cola.dicts import check_choice
from cola.metrics import avqa_metrics
from cola.metrics.avqa import absent_keys
from cola.models.heads.av import POOLING_CHOICES, pool_stream
from cola.models.heads.avqa import AVQAHead, pool_text

from .base import DualStreamTask

__all__ = ["AVQATask"]

STREAMS = ("vision", "audio", "text")


class AVQATask(DualStreamTask):
    """Answer classification on the vision, audio and text streams of the encoder.

    Args:
        encoder: the encoder (:class:`cola.models.DualEncoder` over the streams ``vision``, ``audio``, ``text``).
        num_answers: outputs of the classifier (``data.num_answers``; 42 on the release).
        d_model: width of the fused feature of the head.
        dropout: dropout before the classifier.
        pooling: ``cls`` (official audio-visual code) or ``mean``: how each tower's tokens become one vector.
        segment_pooling: ``mean`` (average of the T segments) or ``attention`` (question-guided, with positions).
        label_smoothing: label smoothing of the cross-entropy.
        **base_kwargs: optimisation, schedule, splits and checkpoint options of :class:`DualStreamTask`.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        num_answers: int = 42,
        d_model: int = 256,
        dropout: float = 0.1,
        pooling: str = "cls",
        segment_pooling: str = "mean",
        label_smoothing: float = 0.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(encoder, **base_kwargs)
        check_choice("task.module.pooling", pooling, POOLING_CHOICES)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"task.module.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        missing = [s for s in STREAMS if s not in encoder.towers]
        if missing:
            raise ValueError(
                f"the AVQA task needs the towers {list(STREAMS)}; the encoder has {list(encoder.towers)} (missing "
                f"{missing}): use a model config with vision, audio and text towers"
            )
        self.pooling = pooling
        self.label_smoothing = float(label_smoothing)
        self.num_answers = int(num_answers)
        width = {s: encoder.towers[s].hidden_size for s in STREAMS}
        self.head = AVQAHead(
            width["vision"],
            width["audio"],
            width["text"],
            num_answers=self.num_answers,
            d_model=d_model,
            dropout=dropout,
            segment_pooling=segment_pooling,
        )

    def encoder_inputs(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Inputs by stream: vision and audio one row per (question, segment), text one row per question."""
        pixels, audio = batch["pixel_values"], batch["input_values"]
        if pixels.ndim != 5 or audio.ndim != 4 or pixels.shape[:2] != audio.shape[:2]:
            raise ValueError(
                f"pixel_values must be (B, T, 3, S, S) and input_values (B, T, F, 128) with the same (B, T), got "
                f"{tuple(pixels.shape)} and {tuple(audio.shape)}"
            )
        if batch["input_ids"].shape[0] != pixels.shape[0]:
            raise ValueError(f"input_ids {tuple(batch['input_ids'].shape)} do not hold one row per video (B, L)")
        return {
            "vision": {"pixel_values": pixels.flatten(0, 1)},  # (B*T, 3, S, S)
            "audio": {"input_values": audio.flatten(0, 1)},  # (B*T, F, 128)
            "text": {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},  # (B, L)
        }

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Answer logits.

        Args:
            batch: the AVQA batch (``pixel_values`` (B, T, 3, S, S), ``input_values`` (B, T, F, 128),
                ``input_ids``, ``attention_mask`` (B, L), ...).

        Returns:
            ``logits`` (B, num_answers).
        """
        B, T = batch["pixel_values"].shape[:2]
        # T segment rows per question for vision and audio, one row per question for the text
        enc = self.encoder(self.encoder_inputs(batch), rows_per_sample={"vision": T, "audio": T, "text": 1})
        vision = pool_stream(enc.tokens["vision"], enc.num_prefix["vision"], self.pooling).view(B, T, -1)  # (B, T, Cv)
        audio = pool_stream(enc.tokens["audio"], enc.num_prefix["audio"], self.pooling).view(B, T, -1)  # (B, T, Ca)
        question = pool_text(enc.tokens["text"], enc.masks["text"], enc.num_prefix["text"], self.pooling)  # (B, Ct)
        return {"logits": self.head(vision, audio, question)}  # (B, num_answers)

    def compute_loss(
        self, out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over the answers, mean over the batch's questions; returns (loss, terms)."""
        logits, labels = out["logits"].float(), batch["labels"]  # (B, A), (B,)
        if labels.shape != logits.shape[:1]:
            raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
        if labels.numel() and int(labels.max()) >= self.num_answers:
            raise ValueError(f"answer index {int(labels.max())} >= task.module.num_answers={self.num_answers}")
        loss = F.cross_entropy(logits, labels, ignore_index=-1, label_smoothing=self.label_smoothing)
        return loss, {"ce": loss.detach()}

    def make_metrics(self) -> dict[str, nn.Module]:
        return dict(avqa_metrics())

    def update_metrics(
        self, metrics: dict[str, nn.Module], out: dict[str, torch.Tensor], batch: dict[str, Any]
    ) -> None:
        preds = out["logits"].detach().argmax(dim=-1)  # (B,)
        for metric in metrics.values():
            metric.update(preds, batch["labels"], batch["question_type"])

    def _log_and_reset(self, split: str) -> dict[str, float]:
        """Logs the split's metrics, leaving out (with one warning naming them) the accuracies of question types
        and modalities the split has no question of: absent keys, not NaN in the logs and ``metrics.json``."""
        metrics = self.metrics_of(split)
        for name in absent_keys(metrics, where=split):
            metrics[name].reset()  # no update left: the base class logs no value for it
        return super()._log_and_reset(split)
