"""MokA (Wei et al., 2025) adapted to two streams (docs/method.md#moka): its config and its layer.

For a layer W0 of stream S with input x and the other stream's tokens y (key mask m)::

    u = s A_S drop(x)        v = s A_O drop(y)        s = alpha / r
    h = W0 x + b + B (u + lambda softmax(u v^T / sqrt(r), masked by m) v)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cola.dicts import check_choice

from .config import POOLING_CHOICES, PROPAGATION_CHOICES, AdapterConfig, _check_per_stream
from .layers import AdapterLinear, _flatten_tokens, _repeat_for_windows
from .variants import INTRA_VARIANTS


@dataclass
class MoKAConfig(AdapterConfig):
    """MokA adapted to two streams (docs/method.md#moka); see :class:`MoKALinear` for the formula.

    Attributes:
        rank: r of the self and cross down-projections.
        alpha: both projections are scaled by alpha / rank before the softmax (MokA's AVT release).
        dropout: dropout on x and on the other stream's tokens.
        intra: ``lora`` (s = alpha / rank) or ``rslora`` (s = alpha / sqrt(rank)); a variant with a
            ``moka_conflict`` (``dora``, ``pissa``) raises, naming why.
        lambda_cross: fixed weight of the cross-attention term (MokA default 1.0).
        bidirectional: vision-language only: let text layers query vision tokens too.
        condition_pooling: unused by MokA (it attends to tokens); kept so configs share one schema.
    """

    method: ClassVar[str] = "moka"
    rank: int = 4
    alpha: float = 16.0
    dropout: float = 0.05
    lambda_cross: float = 1.0
    bidirectional: bool = False
    propagation: str = "progressive"
    condition_pooling: str | dict[str, str] = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant.moka_conflict is not None:
            usable = [n for n, v in INTRA_VARIANTS.items() if v.moka_conflict is None]
            raise ValueError(
                f"peft.intra={self.intra!r} does not apply to MokA (use {' or '.join(usable)}): MokA's B is shared by "
                f"its self and cross terms, so {self.variant.moka_conflict}"
            )
        if isinstance(self.lambda_cross, bool) or not isinstance(self.lambda_cross, (int, float)):
            raise ValueError(f"lambda_cross must be a float, got {self.lambda_cross!r}")
        check_choice("propagation", self.propagation, sorted(PROPAGATION_CHOICES))
        _check_per_stream(
            "condition_pooling", self.condition_pooling, lambda n, v: check_choice(n, v, sorted(POOLING_CHOICES))
        )

    def queries_other(self, *, anchor: bool) -> bool:
        # MokA's asymmetry: the anchor stream's layers are LoRA-shaped unless bidirectional
        return not anchor or self.bidirectional

    def params_per_layer(
        self, *, in_features: int, out_features: int, context_dim: int | None = None, out_splits: int = 1
    ) -> int:
        return self.rank * (in_features + out_features + (context_dim or 0))


class MoKALinear(AdapterLinear):
    """MokA (Wei et al., 2025) adapted to two streams (docs/method.md#moka).

    For x (B, N, d_in) of stream S and the other stream's tokens y (B, M, d_o) with key mask m::

        u = s A_S drop(x)        v = s A_O drop(y)        s = alpha / r
        h = W0 x + b + B (u + lambda softmax(u v^T / sqrt(r), masked by m) v)

    ``moka_A`` (r, d_in) and ``moka_A_other`` (r, d_o) are kaiming-uniform, ``moka_B`` (d_out, r) is zero,
    so h = W0 x + b at init; lambda (``lambda_cross``) is a fixed float; single head, no q/k/v projections;
    not mergeable (the cross term depends on y). With ``context_dim=None`` the layer has no cross term and
    no ``moka_A_other`` (MokA's anchor-stream layers).

    What differs from MokA's single-LLM setting: each stream keeps its own W0, so B is shared between the
    self and the cross path of one layer, not across modalities; MokA's question-span key selection becomes
    "all real tokens of the other stream" (special tokens included); keys come from another backbone, so
    A_O bridges the two widths. Follows MokA's audio-visual-text release (u, v scaled by s before the
    softmax, lambda = 1); its visual-text release uses unscaled u and lambda = 0.05.
    """

    config_class: ClassVar[type[AdapterConfig]] = MoKAConfig
    prefixes: ClassVar[tuple[str, ...]] = ("moka_",)
    up_projections: ClassVar[tuple[str, ...]] = ("moka_B",)
    exchange: ClassVar[str | None] = "tokens"

    def __init__(self, base_layer: nn.Linear, config: MoKAConfig, *, context_dim: int | None) -> None:
        super().__init__(base_layer)
        if context_dim is not None and (isinstance(context_dim, bool) or not isinstance(context_dim, int)):
            raise ValueError(f"context_dim must be a positive integer or None, got {context_dim!r}")
        self.config = config
        self.context_dim = context_dim
        r = config.rank
        self._check_rank(r)
        self.scaling = config.scaling
        self.moka_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        w = base_layer.weight
        kw = dict(dtype=w.dtype, device=w.device)
        self.moka_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        nn.init.kaiming_uniform_(self.moka_A, a=math.sqrt(5))
        if context_dim is not None:
            self.moka_A_other = nn.Parameter(torch.empty(r, context_dim, **kw))
            nn.init.kaiming_uniform_(self.moka_A_other, a=math.sqrt(5))
        self.moka_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        self._context: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @classmethod
    def build(cls, base_layer: nn.Linear, config: MoKAConfig, *, context_dim: int | None, out_splits: int):
        return cls(base_layer, config, context_dim=context_dim)  # one adapter per layer, fused or not (MokA)

    def clear_exchange(self) -> None:
        self.set_context(None)

    def set_context(self, y: torch.Tensor | None, key_mask: torch.Tensor | None = None) -> None:
        """Stores the other stream's tokens y (B, M, d_o) and key mask (B, M) bool (True = real token)."""
        if self.context_dim is None:
            return
        if y is None:
            self._context = None
            return
        if y.ndim != 3 or y.shape[-1] != self.context_dim:
            raise ValueError(f"{self.adapter_name}: context must be (B, M, {self.context_dim}), got {tuple(y.shape)}")
        if key_mask is not None:
            if key_mask.dtype != torch.bool:
                raise ValueError(
                    f"{self.adapter_name}: key_mask must be bool (True = real token), got {key_mask.dtype}"
                )
            if key_mask.shape != y.shape[:2]:
                raise ValueError(
                    f"{self.adapter_name}: key_mask {tuple(key_mask.shape)} != tokens {tuple(y.shape[:2])}"
                )
        self._context = (y, key_mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        xt = _flatten_tokens(x)  # (B', N, d_in)
        u = self.scaling * (self.moka_dropout(xt) @ self.moka_A.t())  # (B', N, r)
        if self.context_dim is not None:
            if self._context is None:
                raise RuntimeError(
                    f"{self.adapter_name}: MoKALinear with a cross term ran without context; call set_context first"
                )
            y, key_mask = self._context
            v = self.scaling * (self.moka_dropout(y) @ self.moka_A_other.t())  # (B, M, r)
            v = _repeat_for_windows(v, xt.shape[0], self.adapter_name)
            scores = u @ v.transpose(1, 2) / math.sqrt(self.config.rank)  # (B', N, M)
            if key_mask is not None:
                if not bool(key_mask.any(dim=1).all()):
                    raise ValueError(f"{self.adapter_name}: a sample has no real key token in its context")
                km = _repeat_for_windows(key_mask, xt.shape[0], self.adapter_name)
                scores = scores.masked_fill(~km[:, None, :], float("-inf"))
            u = u + self.config.lambda_cross * (F.softmax(scores, dim=-1) @ v)
        return self._add_up(out, u, self.moka_B)  # out + u B^T (B's gradient as u^T g: cola/peft/upproject.py)
