"""Answer head of audio-visual question answering (MUSIC-AVQA) over three pooled streams.

Inputs per question: T segment vectors of the vision and audio towers (each tower's tokens of a segment pooled
to one vector) and one pooled question vector. With ``segment_pooling="mean"`` (default) the segments are
averaged; ``"attention"`` weights them by the question instead (the temporal grounding of the official AVST
model, with learned segment positions so that order-dependent questions can be answered):

    v̄ = mean_t v_t,  ā = mean_t a_t                                      (mean)
    α = softmax_t( (W_q q) · (W_k [v_t; a_t] + p_t) / √d ),  v̄ = Σ_t α_t v_t,  ā = Σ_t α_t a_t   (attention)

then the question gates the fused audio-visual feature (the multiplicative fusion of AVST, ``feat * qst`` before
the answer layer) and a linear classifier scores the answer vocabulary:

    z = GELU(W_av [v̄; ā] + b) ⊙ (1 + W_g q)       (B, d)
    y = W_out Dropout(LN(z))                       (B, num_answers)

W_g starts at zero, so at initialisation the head sees the audio-visual feature alone and learns how the
question reweights it. What differs from AVST: the features come from the (adapted) towers' pooled tokens, not
from frozen ResNet/VGGish features with spatial grounding, and there is no LSTM question encoder (the text tower
is one of the three streams).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cola.dicts import check_choice
from cola.models.heads.av import POOLING_CHOICES

__all__ = ["SEGMENT_POOLING_CHOICES", "AVQAHead", "pool_text"]

SEGMENT_POOLING_CHOICES = ("mean", "attention")


def pool_text(tokens: torch.Tensor, mask: torch.Tensor, num_prefix: int, mode: str) -> torch.Tensor:
    """One vector per question from the text tower's final tokens.

    Args:
        tokens: (B, L, C) tokens, ``num_prefix`` leading special tokens (BERT: [CLS]).
        mask: (B, L) bool or 0/1, True = real token (padding excluded from ``mean``).
        num_prefix: number of prefix tokens.
        mode: ``cls`` (token 0) or ``mean`` (mean of the real tokens after the prefix, [SEP] included).

    Returns:
        (B, C).
    """
    check_choice("pooling", mode, POOLING_CHOICES)
    if mode == "cls":
        return tokens[:, 0]
    weights = mask[:, num_prefix:].to(tokens.dtype).unsqueeze(-1)  # (B, L - P, 1)
    return (tokens[:, num_prefix:] * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class AVQAHead(nn.Module):
    """Segment pooling, question-gated audio-visual fusion and the answer classifier (see the module docstring).

    Args:
        vision_dim: width of the pooled vision segment features.
        audio_dim: width of the pooled audio segment features.
        text_dim: width of the pooled question feature.
        num_answers: size of the answer vocabulary (MUSIC-AVQA: 42).
        d_model: width of the fused feature.
        dropout: dropout before the classifier.
        segment_pooling: ``mean`` or ``attention`` over the T segments.
        max_segments: the most segments the position table of ``attention`` covers.
    """

    def __init__(
        self,
        vision_dim: int,
        audio_dim: int,
        text_dim: int,
        *,
        num_answers: int,
        d_model: int = 256,
        dropout: float = 0.1,
        segment_pooling: str = "mean",
        max_segments: int = 60,
    ) -> None:
        super().__init__()
        check_choice("segment_pooling", segment_pooling, SEGMENT_POOLING_CHOICES)
        if num_answers < 2:
            raise ValueError(f"num_answers must be >= 2, got {num_answers}")
        if d_model < 1:
            raise ValueError(f"d_model must be positive, got {d_model}")
        self.segment_pooling = segment_pooling
        self.max_segments = max_segments
        if segment_pooling == "attention":
            self.query = nn.Linear(text_dim, d_model)
            self.key = nn.Linear(vision_dim + audio_dim, d_model)
            self.pos = nn.Parameter(torch.zeros(1, max_segments, d_model))
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.fuse = nn.Sequential(nn.Linear(vision_dim + audio_dim, d_model), nn.GELU())
        self.gate = nn.Linear(text_dim, d_model)
        nn.init.zeros_(self.gate.weight)  # z = GELU(W_av [v; a]) at init: the question's gating is learned
        nn.init.zeros_(self.gate.bias)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_answers)

    def pool_segments(self, av: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """(B, T, C_v + C_a) segment features -> (B, C_v + C_a), by the mean or the question's attention."""
        if self.segment_pooling == "mean":
            return av.mean(dim=1)
        T = av.shape[1]
        if T > self.max_segments:
            raise ValueError(f"{T} segments per video exceed max_segments={self.max_segments} of the AVQA head")
        keys = self.key(av) + self.pos[:, :T]  # (B, T, d)
        scores = torch.einsum("bd,btd->bt", self.query(question), keys) / math.sqrt(keys.shape[-1])  # (B, T)
        return torch.einsum("bt,btc->bc", scores.softmax(dim=-1), av)  # (B, C_v + C_a)

    def forward(self, vision: torch.Tensor, audio: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """Answer logits.

        Args:
            vision: (B, T, vision_dim) pooled frame features, one per segment.
            audio: (B, T, audio_dim) pooled 1-s audio features, one per segment.
            question: (B, text_dim) pooled question feature.

        Returns:
            (B, num_answers) logits.
        """
        if vision.shape[:2] != audio.shape[:2] or question.shape[0] != vision.shape[0]:
            raise ValueError(
                f"vision {tuple(vision.shape)}, audio {tuple(audio.shape)} (B, T, C) and question "
                f"{tuple(question.shape)} (B, C) disagree on B or T"
            )
        av = self.pool_segments(torch.cat([vision, audio], dim=-1), question)  # (B, C_v + C_a)
        z = self.fuse(av) * (1 + self.gate(question))  # (B, d)
        return self.classifier(self.dropout(self.norm(z)))  # (B, num_answers)
