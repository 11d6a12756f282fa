"""Audio-visual heads: per-second event classification (AVE) and an audio-conditioned mask decoder (AVS).

:class:`AVEHead` fuses each second's pooled frame and audio features (concatenation, then a linear layer to
``d_model``), mixes the T seconds with a small temporal module and classifies every second:

    z_t = GELU(W [v_t; a_t] + b)                      (B, T, d_model)
    h   = temporal(z)                                 bidirectional GRU (residual) | transformer encoder | none
    y_t = W_cls LN(h_t)                               (B, T, num_classes)

``temporal="none"`` classifies each second on its own with the same fusion and classifier (no temporal
context). ``temporal="official"`` builds exactly the official AVE head instead (``audio_visual/ave/CoLA/nets/
AVENet.py``), per second and with no temporal mixing:

    y_t = W_2 (W_1 [v_t; a_t] + b_1) + b_2            W_1: (d_v + d_a) -> 512, W_2: 512 -> num_classes

two biased linear layers with nothing between them (no activation, dropout or norm, so the head is affine),
vision first in the concatenation; the official model then takes a softmax and trains it with BCE against the
one-hot labels (``loss=softmax_bce`` of the AVE task). ``d_model``, ``dropout``, ``heads`` and
``temporal_layers`` do not apply to it.

:class:`AVSMaskDecoder` turns intermediate blocks of a plain (single-scale) ViT into a mask, DPT-style:

1. reassemble: the patch tokens of each chosen block (prefix tokens dropped) are normalised, projected to
   ``d_decoder`` and reshaped to the patch grid, then resampled one octave per level (4 blocks, shallow to
   deep: x4, x2, x1, x0.5, as DPT; see :func:`decoder_scale_exponents`), so shallow blocks carry fine detail
   and deep blocks context;
2. audio conditioning (FiLM): the pooled audio feature gives a per-level, per-channel scale and shift,
   ``x <- x * (1 + gamma(a)) + beta(a)``, initialised to the identity (gamma = beta = 0), so the decoder
   starts as a vision-only FPN and learns where the sound should steer it;
3. top-down fusion (FPN): from the deepest level, ``x <- conv(up(x) + level_i)`` down to the shallowest;
4. prediction: conv, a 1x1 conv to one logit, bilinear upsampling to the input resolution S x S.

The official AVS code uses PVT-v2 + TPAVI (a temporal audio-visual attention inside an FPN decoder); this is
the "light decoder" of docs/official_settings.md#settings for the DINOv2 + AST towers. GroupNorm, not BatchNorm:
AVS batches are small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cola.dicts import check_choice

__all__ = [
    "POOLING_CHOICES",
    "TEMPORAL_CHOICES",
    "AVEHead",
    "AVSMaskDecoder",
    "decoder_scale_exponents",
    "default_decoder_layers",
    "pool_stream",
]

TEMPORAL_CHOICES = ("gru", "transformer", "none", "official")
OFFICIAL_AVE_HIDDEN = 512  # width between the official head's two linear layers
POOLING_CHOICES = ("cls", "mean")


def pool_stream(tokens: torch.Tensor, num_prefix: int, mode: str) -> torch.Tensor:
    """One vector per sample from a tower's final tokens.

    Args:
        tokens: (N, P + M, C) tokens, P = ``num_prefix`` leading special tokens (CLS, registers, AST's two).
        num_prefix: number of prefix tokens.
        mode: ``cls`` (token 0, official audio-visual code) or ``mean`` (mean of the M content tokens).

    Returns:
        (N, C).
    """
    check_choice("pooling", mode, POOLING_CHOICES)
    if mode == "cls":
        return tokens[:, 0]
    return tokens[:, num_prefix:].mean(dim=1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), _group_norm(out_ch), nn.ReLU(inplace=True))


# --------------------------------------------------------------------------------------------------- AVE
class AVEHead(nn.Module):
    """Fusion of per-second vision and audio features, a temporal module over the seconds and a classifier.

    Args:
        vision_dim: width of the pooled vision feature.
        audio_dim: width of the pooled audio feature.
        num_classes: classes per second (AVE: 29 = 28 events + background).
        d_model: width of the fused features and of the temporal module.
        temporal: ``gru`` (one bidirectional GRU layer of d_model / 2 per direction, residual), ``transformer``
            (pre-norm encoder layers with learned positions over the seconds), ``none`` (each second alone, same
            fusion and classifier) or ``official`` (exactly the official head, each second alone:
            ``Linear(d_v + d_a, 512) -> Linear(512, num_classes)``, no activation, dropout or norm; the
            width, dropout and temporal options are not used).
        temporal_layers: GRU / transformer layers.
        heads: attention heads of the transformer.
        dropout: dropout after the fusion and inside the temporal module.
        max_seconds: the most seconds per video the transformer's position table covers.
    """

    def __init__(
        self,
        vision_dim: int,
        audio_dim: int,
        *,
        num_classes: int = 29,
        d_model: int = 256,
        temporal: str = "gru",
        temporal_layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        max_seconds: int = 10,
    ) -> None:
        super().__init__()
        check_choice("temporal", temporal, TEMPORAL_CHOICES)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if temporal == "gru" and d_model % 2:
            raise ValueError(f"d_model must be even for temporal=gru (two directions of d_model / 2), got {d_model}")
        if temporal == "transformer" and d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads}) for temporal=transformer")
        if temporal_layers < 1:
            raise ValueError(f"temporal_layers must be >= 1, got {temporal_layers}")
        self.temporal_kind = temporal
        self.max_seconds = max_seconds
        self.temporal: nn.Module | None = None
        self.pos: nn.Parameter | None = None
        if temporal == "official":
            # official AVENet: mlp_class then mlp_class_2, nothing in between (the softmax is in the loss)
            self.fuse: nn.Module | None = None
            self.norm: nn.Module | None = None
            self.classifier = nn.Sequential(
                nn.Linear(vision_dim + audio_dim, OFFICIAL_AVE_HIDDEN), nn.Linear(OFFICIAL_AVE_HIDDEN, num_classes)
            )
            return
        self.fuse = nn.Sequential(nn.Linear(vision_dim + audio_dim, d_model), nn.GELU(), nn.Dropout(dropout))
        if temporal == "gru":
            self.temporal = nn.GRU(
                d_model,
                d_model // 2,
                num_layers=temporal_layers,
                batch_first=True,
                bidirectional=True,
                dropout=dropout if temporal_layers > 1 else 0.0,
            )
        elif temporal == "transformer":
            layer = nn.TransformerEncoderLayer(
                d_model, heads, 2 * d_model, dropout=dropout, activation="gelu", batch_first=True, norm_first=True
            )
            self.temporal = nn.TransformerEncoder(layer, temporal_layers, enable_nested_tensor=False)
            self.pos = nn.Parameter(torch.zeros(1, max_seconds, d_model))
            nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(d_model)
        self.classifier = nn.Linear(d_model, num_classes)

    def forward(self, vision: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Per-second logits.

        Args:
            vision: (B, T, vision_dim) pooled frame features.
            audio: (B, T, audio_dim) pooled 1-s audio features.

        Returns:
            (B, T, num_classes) logits.
        """
        if vision.shape[:2] != audio.shape[:2]:
            raise ValueError(f"vision {tuple(vision.shape)} and audio {tuple(audio.shape)} differ in (B, T)")
        x = torch.cat([vision, audio], dim=-1)  # (B, T, d_v + d_a), vision first (official order)
        if self.temporal_kind == "official":
            return self.classifier(x)  # (B, T, num_classes): per second, affine
        z = self.fuse(x)  # (B, T, d)
        if self.temporal_kind == "gru":
            z = z + self.temporal(z)[0]  # (B, T, d): both directions concatenated, residual
        elif self.temporal_kind == "transformer":
            T = z.shape[1]
            if T > self.max_seconds:
                raise ValueError(f"{T} seconds per video exceed max_seconds={self.max_seconds} of the AVE head")
            z = self.temporal(z + self.pos[:, :T])  # (B, T, d)
        return self.classifier(self.norm(z))  # (B, T, num_classes)


# --------------------------------------------------------------------------------------------------- AVS
def default_decoder_layers(depth: int, count: int = 4) -> list[int]:
    """``count`` block indices evenly spaced over ``depth`` blocks, ending at the last (12 -> [2, 5, 8, 11])."""
    n = min(count, depth)
    return [((k + 1) * depth) // n - 1 for k in range(n)]


def decoder_scale_exponents(num_levels: int) -> list[int]:
    """Resampling of each level (shallow to deep) as a power of two of the patch grid.

    The deepest block stays at the grid (x0.5 with 4 or more blocks, as DPT), each shallower block sits one
    octave finer, at most x4: 4 blocks -> [2, 1, 0, -1]; 3 -> [2, 1, 0]; 2 -> [1, 0]; 6 -> [2, 2, 2, 1, 0, -1].
    """
    shift = 1 if num_levels >= 4 else 0
    return [min(num_levels - 1 - i - shift, 2) for i in range(num_levels)]


class _Resample(nn.Module):
    """Changes the side of a (N, C, h, w) map by ``2 ** exponent`` (transposed conv up, strided conv down)."""

    def __init__(self, channels: int, exponent: int) -> None:
        super().__init__()
        if exponent > 0:
            s = 2**exponent
            self.op: nn.Module = nn.ConvTranspose2d(channels, channels, kernel_size=s, stride=s)
        elif exponent < 0:
            self.op = nn.Sequential(*[nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(-exponent)])
        else:
            self.op = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class AVSMaskDecoder(nn.Module):
    """Audio-conditioned DPT/FPN-style mask decoder over several ViT blocks (see the module docstring).

    Args:
        vision_dim: width of the vision tokens.
        audio_dim: width of the pooled audio feature.
        num_levels: how many vision blocks feed the decoder (shallow to deep).
        num_prefix_tokens: leading non-patch tokens of the vision sequence (CLS, registers), dropped.
        d_decoder: channels of the decoder.
    """

    def __init__(
        self, vision_dim: int, audio_dim: int, *, num_levels: int, num_prefix_tokens: int, d_decoder: int = 128
    ) -> None:
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"the AVS decoder needs at least one vision block, got num_levels={num_levels}")
        if d_decoder < 1:
            raise ValueError(f"d_decoder must be positive, got {d_decoder}")
        self.num_levels = num_levels
        self.num_prefix_tokens = num_prefix_tokens
        self.d_decoder = d_decoder
        # block outputs come before the tower's final norm: each level normalises its own tokens
        self.project = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(vision_dim), nn.Linear(vision_dim, d_decoder)) for _ in range(num_levels)
        )
        self.scale_exponents = decoder_scale_exponents(num_levels)
        self.resample = nn.ModuleList(_Resample(d_decoder, e) for e in self.scale_exponents)
        self.film = nn.Linear(audio_dim, 2 * d_decoder * num_levels)
        nn.init.zeros_(self.film.weight)  # identity at start: x * (1 + 0) + 0
        nn.init.zeros_(self.film.bias)
        self.fuse = nn.ModuleList(_conv_block(d_decoder, d_decoder) for _ in range(num_levels))
        self.head = nn.Sequential(_conv_block(d_decoder, d_decoder // 2 or 1), nn.Conv2d(d_decoder // 2 or 1, 1, 1))

    def _grid(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1] - self.num_prefix_tokens
        side = math.isqrt(max(n, 0))
        if n <= 0 or side * side != n:
            raise ValueError(
                f"vision tokens ({tokens.shape[1]}, of which {self.num_prefix_tokens} prefix) do not form a square "
                "patch grid; AVS needs square frames whose side is a multiple of the patch size"
            )
        return tokens[:, self.num_prefix_tokens :].transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    def forward(
        self, layers: Sequence[torch.Tensor], audio: torch.Tensor, output_size: int | tuple[int, int]
    ) -> torch.Tensor:
        """Mask logits for each frame.

        Args:
            layers: ``num_levels`` tensors (N, P + h*w, vision_dim), shallow to deep.
            audio: (N, audio_dim) pooled audio feature of each frame's second.
            output_size: side S (or (H, W)) of the output, the input frame resolution.

        Returns:
            (N, H, W) mask logits.
        """
        if len(layers) != self.num_levels:
            raise ValueError(f"the AVS decoder was built for {self.num_levels} vision blocks, got {len(layers)}")
        film = self.film(audio).view(audio.shape[0], self.num_levels, 2, self.d_decoder, 1, 1)  # (N, L, 2, d, 1, 1)
        levels = []
        for i, tokens in enumerate(layers):
            x = self._grid(self.project[i](tokens))  # (N, d, h, w)
            x = self.resample[i](x)  # (N, d, h * 2^e, w * 2^e)
            levels.append(x * (1 + film[:, i, 0]) + film[:, i, 1])
        x = self.fuse[-1](levels[-1])  # deepest
        for i in range(self.num_levels - 2, -1, -1):
            up = F.interpolate(x, size=levels[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[i](up + levels[i])  # (N, d, h_i, w_i)
        logits = self.head(x)  # (N, 1, h_0, w_0)
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
