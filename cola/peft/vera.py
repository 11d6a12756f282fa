"""VeRA, vector-based random matrix adaptation (Kopiczko et al., ICLR 2024, §3, Eq. 1): its config and its layer.

    h = W0 x + b + Λ_b B Λ_d A drop(x)

A (r, d_in) and B (d_out, r) are frozen random matrices, the same for every adapted layer of one shape (drawn from
``projection_seed`` and the shape, so a rebuilt model draws them again); Λ_d = diag(d) with d (r,) and
Λ_b = diag(b) with b (d_out,) are the only trained tensors: r + d_out parameters per layer, whatever d_in. b starts
at zero, so h = W0 x + b at init. The frozen matrices are persistent buffers named with the ``vera_`` prefix: checkpoints and
adapter files keep them with the trained vectors (a file loads exactly even if the draw changed).

What differs from HF peft's ``VeraModel`` (equal outputs on the same matrices, tested): HF draws one A of
(r, max d_in) and one B of (max d_out, r) for the whole model and slices them per layer; here each shape has its own
draw (layers of one shape share it). A fused layer (timm ``attn.qkv``) is one linear, as HF's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .config import AdapterConfig
from .layers import AdapterLinear
from .variants import INTRA_VARIANTS

_MIX = 1_000_003  # mixes (seed, rows, cols) into one generator seed


def frozen_random(rows: int, cols: int, *, seed: int) -> torch.Tensor:
    """The frozen (rows, cols) matrix every layer of that shape shares: kaiming-uniform for fan-in ``cols`` (VeRA's
    init, bound sqrt(6 / cols)), float32 on the CPU, from a generator seeded by ``seed`` and the shape only."""
    g = torch.Generator(device="cpu").manual_seed((seed * _MIX * _MIX + rows * _MIX + cols) % 2**63)
    bound = math.sqrt(6.0 / cols)
    return (torch.rand(rows, cols, generator=g, device="cpu") * 2 - 1) * bound


@dataclass
class VeRAConfig(AdapterConfig):
    """VeRA (docs/method.md#vera); see :class:`VeRALinear` for the formula.

    Attributes:
        rank: r, the width of the frozen A (r, d_in) and B (d_out, r) and of the trained d (VeRA's own: 256).
        alpha: unused (VeRA has no scale: d and b are the scale); kept so ``rank=R`` composes for every method.
        dropout: dropout on the adapter input.
        intra: the plain variant only (``lora``, :attr:`cola.peft.IntraVariant.plain`: the others reshape a trained
            B A, which VeRA does not have).
        d_initial: initial value of every entry of d (HF peft's default 0.1).
        projection_seed: seed of the frozen random matrices (HF peft's ``projection_prng_key``).
    """

    method: ClassVar[str] = "vera"
    rank: int = 256
    d_initial: float = 0.1
    projection_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.variant.plain:
            plain = [name for name, v in INTRA_VARIANTS.items() if v.plain]
            raise ValueError(
                f"peft.intra={self.intra!r} does not apply to VeRA (use {' or '.join(plain)}): its A and B are frozen "
                "random matrices, there is no trained B A for a variant to rescale or re-initialise"
            )
        if isinstance(self.d_initial, bool) or not isinstance(self.d_initial, (int, float)):
            raise ValueError(f"d_initial must be a float, got {self.d_initial!r}")
        if (
            isinstance(self.projection_seed, bool)
            or not isinstance(self.projection_seed, int)
            or self.projection_seed < 0
        ):
            raise ValueError(f"projection_seed must be a non-negative integer, got {self.projection_seed!r}")

    def params_per_layer(
        self, *, in_features: int, out_features: int, context_dim: int | None = None, out_splits: int = 1
    ) -> int:
        return self.rank + out_features


class VeRALinear(AdapterLinear):
    """VeRA: ``h = W0 x + b + Λ_b B Λ_d A drop(x)`` with A, B frozen and shared per shape, d and b trained.

    Args:
        base_layer: the frozen linear layer W0 (d_out, d_in).
        config: rank, dropout, d_initial, projection_seed (see :class:`VeRAConfig`).

    Tensors: ``vera_A`` (r, d_in) and ``vera_B`` (d_out, r) persistent buffers (:func:`frozen_random`),
    ``vera_lambda_d`` (r,) = ``d_initial``, ``vera_lambda_b`` (d_out,) = 0. ``merge()`` folds
    ``diag(b) B diag(d) A`` into W0 (idempotent, guarded by ``merged``).
    """

    config_class: ClassVar[type[AdapterConfig]] = VeRAConfig
    prefixes: ClassVar[tuple[str, ...]] = ("vera_",)
    mergeable: ClassVar[bool] = True

    def __init__(self, base_layer: nn.Linear, config: VeRAConfig) -> None:
        super().__init__(base_layer)
        self.config = config
        r = config.rank
        self._check_rank(r)
        w = base_layer.weight
        kw = dict(dtype=w.dtype, device=w.device)
        self.vera_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.register_buffer("vera_A", frozen_random(r, self.in_features, seed=config.projection_seed).to(**kw))
        self.register_buffer("vera_B", frozen_random(self.out_features, r, seed=config.projection_seed).to(**kw))
        self.vera_lambda_d = nn.Parameter(torch.full((r,), float(config.d_initial), **kw))
        self.vera_lambda_b = nn.Parameter(torch.zeros(self.out_features, **kw))
        self.merged = False

    @classmethod
    def build(cls, base_layer: nn.Linear, config: VeRAConfig, *, context_dim: int | None, out_splits: int):
        return cls(base_layer, config)  # no exchange; a fused layer is one linear (HF peft)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        z = (self.vera_dropout(x) @ self.vera_A.t()) * self.vera_lambda_d  # (..., r)
        return self._add_up(out, z, self.vera_B * self.vera_lambda_b[:, None])  # out + z (diag(b) B)^T

    def delta_weight(self) -> torch.Tensor:
        """``diag(b) B diag(d) A``, (d_out, d_in)."""
        return (self.vera_lambda_b[:, None] * self.vera_B) @ (self.vera_lambda_d[:, None] * self.vera_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the adapter into W0 (idempotent)."""
        if not self.merged:
            self._set_weight(self.base_layer.weight + self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._set_weight(self.base_layer.weight - self.delta_weight())
            self.merged = False

    @torch.no_grad()
    def original_weight(self) -> torch.Tensor:
        """W0 as the pretrained model had it (undoes a merge)."""
        w = self.base_layer.weight.detach()
        return (w - self.delta_weight() if self.merged else w).clone()

    def _set_weight(self, new: torch.Tensor) -> None:
        if not torch.isfinite(new).all():
            raise FloatingPointError(
                f"{self.adapter_name}: merging the adapter gives non-finite weights; left unchanged"
            )
        self.base_layer.weight.data.copy_(new.to(self.base_layer.weight.dtype))
