"""Adapter layers that wrap a frozen ``nn.Linear`` and keep its ``forward(x)`` signature.

CoLA — Cross-Modal Low-Rank Adaptation (arXiv 2604.03314, ICML 2026, §3, Eq. 3):

    h = W0 x + b  +  (alpha / r) B_L A_L drop(x)  +  lambda B_C Phi(c) A_C drop(x)

The first low-rank path is LoRA (intra-modal). The second (inter-modal) path has an r x r core Phi(c) that a
small hypernetwork computes per sample from a condition c pooled from the *other* stream at the same depth.
The condition reaches the layer through :meth:`CoLALinear.set_condition` (the dual encoder calls it), never
through ``forward``, so timm/transformers blocks run unmodified.

Layout of a fused layer (``out_splits = S``, e.g. timm ``attn.qkv`` with S = 3), as the official
``CMMergedLinear``: ``lora_A``/``cola_A`` are (S r, d_in) with slice s in rows ``[s r, (s+1) r)``,
``lora_B``/``cola_B`` are (d_out, r) with slice s in rows ``[s d_out/S, (s+1) d_out/S)``, ``cola_lambda`` is
(S,) and ``cola_hypernet`` is a ``ModuleList`` of S hypernetworks. Slice s is exactly a CoLALinear on the
rows of W0 of that slice (tested).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from .config import AdapterConfig, CoLAConfig, LoRAConfig
from .hypernet import HyperNetwork, MultiSourceHyperNetwork, stacked_hypernet_forward
from .upproject import accumulate_up_, up_project
from .variants import IntraVariantMixin


def _flatten_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, ..., d) -> (B, L, d): windowed / 2-D token grids become one token axis."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _repeat_for_windows(t: torch.Tensor, batch: int, name: str, dim: int = 0) -> torch.Tensor:
    """Repeats a per-sample tensor k times when the layer sees a windowed batch of k * B rows
    (docs/method.md#cola-layer)."""
    n = t.shape[dim]
    if batch == n:
        return t
    if batch % n:
        raise ValueError(f"{name}: input batch {batch} is not a multiple of the condition batch {n}")
    return t.repeat_interleave(batch // n, dim=dim)


class AdapterLinear(nn.Module):
    """Common wrapper: holds the frozen base layer and the slice layout.

    A subclass declares what it needs from the dual encoder and what the helpers of :mod:`cola.peft.inject` may
    do with it, so no caller branches on the layer's type:

    Attributes:
        config_class: the config dataclass the layer is built from (:func:`cola.peft.methods.layer_for`).
        prefixes: name prefixes of its adapter parameters (filtering is a prefix check).
        up_projections: names of its B matrices (the up-projections LoRA+ gives their own learning rate).
        exchange: what it takes from the other stream: ``"condition"`` (a pooled (B, d_c) vector, through
            ``set_condition``), ``"tokens"`` (the other stream's tokens and key mask, through ``set_context``)
            or ``None``.
        mergeable: whether ``merge()`` / ``unmerge()`` fold a path into the base weight.
        gate: name of its learned gate λ (one per slice, scaling the path fed by the other stream), the value the
            λ profile across depth reads (:mod:`cola.lambdas`); ``None``: no learned gate.
    """

    config_class: ClassVar[type[AdapterConfig]]
    prefixes: ClassVar[tuple[str, ...]] = ()
    up_projections: ClassVar[tuple[str, ...]] = ()
    exchange: ClassVar[str | None] = None
    mergeable: ClassVar[bool] = False
    gate: ClassVar[str | None] = None

    def __init__(self, base_layer: nn.Linear, *, out_splits: int = 1) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"adapters wrap nn.Linear, got {type(base_layer).__name__}")
        if isinstance(out_splits, bool) or not isinstance(out_splits, int) or out_splits < 1:
            raise ValueError(f"out_splits must be a positive integer, got {out_splits!r}")
        if base_layer.out_features % out_splits:
            raise ValueError(
                f"out_splits={out_splits} does not divide out_features={base_layer.out_features} of the base layer"
            )
        self.base_layer = base_layer
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.out_splits = out_splits
        self.adapter_name = type(self).__name__  # set to the qualified module name by inject_adapters
        for p in base_layer.parameters():
            p.requires_grad_(False)

    @classmethod
    def build(
        cls, base_layer: nn.Linear, config: AdapterConfig, *, context_dim: int | None, out_splits: int
    ) -> AdapterLinear:
        """The layer for ``base_layer``; a subclass takes from the keywords what its constructor needs."""
        raise NotImplementedError

    @property
    def receives(self) -> bool:
        """Whether this layer takes the other stream's state (``exchange`` set and a width to take it at)."""
        return self.exchange is not None and getattr(self, "context_dim", None) is not None

    def clear_exchange(self) -> None:
        """Drops the other stream's state handed over last (no tensor of a past batch stays referenced)."""

    def frozen_parameter(self, name: str) -> bool:
        """Whether parameter ``name`` (relative to this layer) stays frozen when adapters train."""
        return name.startswith("base_layer.")

    # Read-only views so code that inspects ``layer.weight`` (dtype/device checks) keeps working.
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def _check_rank(self, rank: int) -> None:
        if rank > min(self.in_features, self.out_features // self.out_splits):
            raise ValueError(
                f"rank={rank} exceeds the width of {self.adapter_name} "
                f"(in={self.in_features}, out per slice={self.out_features // self.out_splits})"
            )

    def _add_up(self, out: torch.Tensor, z: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``out + per-slice up-projection of z``: slice s of the output gets ``z_s B_s^T``.

        z (..., S*k) holds S slices of width k; b (d_out, k) holds the S row blocks of the slices' B. A fused
        layer multiplies each slice by its own block (one batched GEMM), never a block-diagonal (d_out, S*k)
        matrix whose zero blocks would triple the up-projection's cost (and its backward's) for q/k/v.

        Under autograd it is :func:`cola.peft.upproject.up_project`: an autograd function that adds in place into
        the fresh base output and computes B's gradient as ``z^T g`` (autograd's ``g^T z`` runs 6-10x slower for
        k <= 8 on CPU; docs/benchmarks/batch_profile.md). Without autograd (eval, merged inference) the GEMM
        accumulates into the fresh base output in place. In-place ops are outside autocast, so the operands take
        the output's dtype (bf16 under autocast).
        """
        s, k, d = self.out_splits, b.shape[1], self.out_features
        n = out.numel() // d
        z, b = z.to(out.dtype), b.to(out.dtype)
        if torch.is_grad_enabled() and (out.requires_grad or z.requires_grad or b.requires_grad):
            return up_project(out, z, b, s)
        # into the fresh base output; B enters as a transposed view (BLAS reads it as is: no copy per forward)
        accumulate_up_(out.view(n, d), z.reshape(n, s * k), b.t() if s == 1 else b.reshape(s, d // s, k).mT, s)
        return out

    def _delta_weight(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Block-diagonal product B A for the S slices: (d_out, d_in)."""
        s, r = self.out_splits, a.shape[0] // self.out_splits
        return torch.einsum("sor,sri->soi", b.reshape(s, -1, r), a.reshape(s, r, -1)).reshape(self.out_features, -1)


class LowRankLinear(IntraVariantMixin, AdapterLinear):
    """The intra-modal path LoRA and CoLA share: ``s B_L A_L drop(x)`` with ``lora_A`` (S r, d_in) kaiming-uniform
    and ``lora_B`` (d_out, r) zero, and the one merge of it into W0 (idempotent, guarded by ``merged``).

    ``config.intra`` names its variant (:mod:`cola.peft.variants`), the object ``self.variant`` that the forward,
    the merge and the counts ask: ``lora``, ``rslora`` (another scale), ``dora`` (+ ``lora_magnitude`` (d_out,))
    or ``pissa`` (A, B from W0's SVD; the base holds the residual, the initial factors are the buffers
    ``lora_pissa_A0`` / ``lora_pissa_B0``).
    """

    prefixes: ClassVar[tuple[str, ...]] = ("lora_",)
    up_projections: ClassVar[tuple[str, ...]] = ("lora_B",)
    mergeable: ClassVar[bool] = True

    def _init_intra(self, config: AdapterConfig) -> None:
        r, s = config.rank, self.out_splits
        self._check_rank(r)
        self.variant = config.variant
        self.scaling = config.scaling
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        w = self.base_layer.weight
        self.lora_A = nn.Parameter(torch.empty(s * r, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # drawn for every variant: the same RNG stream follows
        self.merged = False
        self.variant.init(self)


class LoRALinear(LowRankLinear):
    """LoRA: ``h = W0 x + b + (alpha / r) B A drop(x)``; equals HF peft's LoRA on the same weights (tested).

    Args:
        base_layer: the frozen linear layer.
        config: rank, alpha, dropout.
        out_splits: slices of a fused layer, each with its own A and B (official ``MergedLinear``); 1 for
            a plain layer or when ``config.split_fused`` is False.
    """

    config_class: ClassVar[type[AdapterConfig]] = LoRAConfig

    def __init__(self, base_layer: nn.Linear, config: LoRAConfig, *, out_splits: int = 1) -> None:
        super().__init__(base_layer, out_splits=out_splits if config.split_fused else 1)
        self.config = config
        self._init_intra(config)

    @classmethod
    def build(cls, base_layer: nn.Linear, config: LoRAConfig, *, context_dim: int | None, out_splits: int):
        return cls(base_layer, config, out_splits=out_splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        xd = self.lora_dropout(x)
        # W0 x + b, or the variant's own frozen part and row scale g (DoRA: g = m / ||W0 + s B A||)
        out, g = self.variant.base_output(self, x, xd if self.training and self.config.dropout > 0 else None)
        z = xd @ self.down_weight().t()  # (..., S r)
        return self._add_up(out, z * self.scaling, self.lora_B if g is None else self.lora_B * g[:, None])


class CoLALinear(LowRankLinear):
    """CoLA layer (docs/method.md#cola-layer): ``h = W0 x + b + s B_L A_L drop(x) + lambda B_C Phi(c) A_C drop(x)``.

    Args:
        base_layer: the frozen linear layer W0 (d_out, d_in).
        config: rank, alpha, dropout, reduction, lambda_init, sharing, condition (see :class:`CoLAConfig`).
        context_dim: d_c, width of the condition (the other stream's hidden size).
        out_splits: number of independent output slices of a fused layer (3 for timm ``attn.qkv``).

    Sharing (``config.sharing``): ``none`` keeps four matrices; ``shared_a`` uses A_L for both paths (no
    ``cola_A``); ``shared_b`` uses B_L for both (no ``cola_B``); ``full`` shares both.

    Condition controls (``config.condition``): ``pooled`` uses c as given; ``shuffled`` takes c from the next
    sample, ``(i + g) mod B`` for rows that come in groups of g from one sample (``set_condition(c, group=g)``:
    the 10 seconds of an AVE video, the 5 frames of an AVS clip), so a row never gets a condition of its own
    video (a fixed derangement of the samples; needs >= 2 of them); ``zero`` uses c = 0; ``random_frozen``
    keeps the hypernetwork at its random init (its parameters never train).

    Intra variants (``config.intra``, :mod:`cola.peft.variants`) change only the intra path. Under DoRA the inter
    path adds *outside* the decomposition, ``h = DoRA(x) + lambda B_C Phi(c) A_C drop(x)``, not inside the
    normalised direction: the inter update is input-dependent (Phi(c) changes per sample) while DoRA's magnitude and
    row norm are properties of one weight matrix, so there is no per-layer weight to normalise it into; outside, CoLA
    over DoRA at zero init is exactly DoRA (B_C = 0), and ``merge()`` folds the DoRA weight exactly as DoRA alone.
    """

    config_class: ClassVar[type[AdapterConfig]] = CoLAConfig
    prefixes: ClassVar[tuple[str, ...]] = ("lora_", "cola_")
    up_projections: ClassVar[tuple[str, ...]] = ("lora_B", "cola_B")
    exchange: ClassVar[str | None] = "condition"
    gate: ClassVar[str | None] = "cola_lambda"

    def __init__(self, base_layer: nn.Linear, config: CoLAConfig, *, context_dim: int, out_splits: int = 1) -> None:
        super().__init__(base_layer, out_splits=out_splits)
        dims = context_dim if isinstance(context_dim, tuple) else (context_dim,)  # a tuple: one net per source
        if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims) or not dims:
            raise ValueError(f"context_dim must be a positive integer (or a tuple of them), got {context_dim!r}")
        if isinstance(config.reduction, Mapping):
            raise ValueError(
                f"reduction={dict(config.reduction)} is per stream; build the layer with config.for_stream(<stream>)"
            )
        self.config = config
        self.context_dim = sum(dims)  # width of the condition set_condition takes
        self.context_dims = dims
        r, s = config.rank, self.out_splits
        self._init_intra(config)
        w = base_layer.weight
        kw = dict(dtype=w.dtype, device=w.device)
        self.share_a = config.sharing in ("shared_a", "full")
        self.share_b = config.sharing in ("shared_b", "full")
        if not self.share_a:
            self.cola_A = nn.Parameter(torch.empty(s * r, self.in_features, **kw))
            nn.init.kaiming_uniform_(self.cola_A, a=math.sqrt(5))
        if not self.share_b:
            self.cola_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        self.cola_lambda = nn.Parameter(torch.full((s,), config.lambda_value, **kw))
        hyper = dict(reduction=config.reduction, dropout=config.hypernet_dropout, init=config.hypernet_init)
        nets = [
            HyperNetwork(dims[0], r, **hyper) if len(dims) == 1 else MultiSourceHyperNetwork(dims, r, **hyper)
            for _ in range(s)
        ]
        self.cola_hypernet = nets[0] if s == 1 else nn.ModuleList(nets)
        self.cola_hypernet.to(**kw)
        if config.condition == "random_frozen":
            self.cola_hypernet.requires_grad_(False)
        self._condition: torch.Tensor | None = None
        self._group = 1

    @classmethod
    def build(cls, base_layer: nn.Linear, config: CoLAConfig, *, context_dim: int | None, out_splits: int):
        if context_dim is None:
            raise ValueError("CoLA needs context_dim (the other stream's hidden size)")
        return cls(base_layer, config, context_dim=context_dim, out_splits=out_splits)

    def frozen_parameter(self, name: str) -> bool:
        # random_frozen keeps the hypernetwork at its random init
        frozen_hyper = self.config.condition == "random_frozen" and name.startswith("cola_hypernet.")
        return super().frozen_parameter(name) or frozen_hyper

    def clear_exchange(self) -> None:
        self.set_condition(None)

    # ----------------------------------------------------------------- condition
    def set_condition(self, c: torch.Tensor | None, *, group: int = 1) -> None:
        """Stores the condition (B, d_c) used by the following forwards; ``None`` clears it.

        ``group``: consecutive rows of c that come from one sample (a video's seconds or frames); only the
        ``shuffled`` control reads it, to take the condition from another sample, not from the same video.
        """
        if c is not None and (c.ndim != 2 or c.shape[-1] != self.context_dim):
            raise ValueError(
                f"{self.adapter_name}: condition must have shape (B, {self.context_dim}), got {tuple(c.shape)}"
            )
        self._condition = c
        self._group = group

    def _effective_condition(self, c: torch.Tensor) -> torch.Tensor:
        mode = self.config.condition
        if mode == "zero":
            return torch.zeros_like(c)
        if mode == "shuffled":
            g = self._group
            if c.shape[0] % g or c.shape[0] // g < 2:
                raise ValueError(
                    f"{self.adapter_name}: condition='shuffled' needs a batch of >= 2 samples, got {c.shape[0]} "
                    f"rows in groups of {g} per sample"
                )
            return torch.roll(c, shifts=-g, dims=0)  # row i (sample i // g) gets row i + g: the next sample's
        return c

    def phi(self, c: torch.Tensor) -> torch.Tensor:
        """Phi for every slice: (S, B, r, r)."""
        if self.out_splits == 1:
            return self.cola_hypernet(c).unsqueeze(0)
        if len(self.context_dims) > 1:  # per_stream: each slice sums its per-source hypernetworks
            return torch.stack([net(c) for net in self.cola_hypernet])
        return stacked_hypernet_forward(self.cola_hypernet, c)

    # ----------------------------------------------------------------- weights
    @property
    def A_C(self) -> torch.Tensor:  # noqa: N802 - the paper's name
        return self.lora_A if self.share_a else self.cola_A

    @property
    def B_C(self) -> torch.Tensor:  # noqa: N802
        return self.lora_B if self.share_b else self.cola_B

    # ----------------------------------------------------------------- forward
    def inter_core(self, phi: torch.Tensor, rows: int) -> torch.Tensor:
        """``lambda_s Phi_s^T`` of every slice as one per-sample matrix (B', S r, S r), block-diagonal over the slices:
        the inter core of all S slices is then one batched GEMM ``t = z_C core`` on z_C's own (B', L, S r) layout
        (no per-slice transposes or copies; the zero blocks cost S r^2 extra multiply-adds per token, nothing next
        to the layer's d_in d_out). ``rows`` = B': a windowed batch of k B rows repeats each sample's core k times.
        """
        s, r = self.out_splits, self.config.rank
        core = phi.transpose(-1, -2) * self.cola_lambda.reshape(s, 1, 1, 1)  # (S, B, r, r): lambda_s Phi_s^T
        if s == 1:
            core = core[0]  # (B, r, r)
        else:  # (B, S, r, 1, r) * (S, 1, S, 1): block (i, j) is core_i when i = j, else 0
            eye = torch.eye(s, dtype=core.dtype, device=core.device)
            core = (core.permute(1, 0, 2, 3).unsqueeze(3) * eye[:, None, :, None]).reshape(-1, s * r, s * r)
        return _repeat_for_windows(core, rows, self.adapter_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._condition is None:
            raise RuntimeError(
                f"{self.adapter_name}: CoLALinear ran without a condition; run it inside DualEncoder or call "
                "set_condition(c) first"
            )
        s, r = self.out_splits, self.config.rank
        xt = _flatten_tokens(x)  # (B', L, d_in)
        core = self.inter_core(self.phi(self._effective_condition(self._condition)), xt.shape[0])  # (B', S r, S r)
        dropout, xd = self.config.dropout > 0, None
        # Down-projections: one GEMM for [A_L; A_C] when both paths see the same (undropped) input.
        if self.merged:
            z_l = None
            z_c = (self.lora_dropout(xt) if dropout else xt) @ self.A_C.t()
        else:
            a_l = self.down_weight()  # A_L, or the variant's own down-projection of the intra path
            if not dropout and not self.share_a:
                z = xt @ torch.cat([a_l, self.cola_A]).t()  # (B', L, 2 S r)
                z_l, z_c = z.split(s * r, dim=-1)
            else:
                xd = self.lora_dropout(xt)
                z_l = xd @ a_l.t()
                reuse = self.share_a and not dropout and a_l is self.lora_A  # A_C = A_L on the same input
                z_c = z_l if reuse else self.lora_dropout(xt) @ self.A_C.t()
        t = torch.bmm(z_c, core)  # (B', L, S r): lambda_s Phi_s z_C,s per slice and sample
        if z_l is None:
            return self._add_up(self.base_layer(x), t, self.B_C)
        # W0 x + b, or the variant's frozen part and row scale g. DoRA(x) + inter path: g = m / ||W0 + s B_L A_L||
        # scales W0 x and the intra path, never the inter one
        out, g = self.variant.base_output(self, x, xd if dropout and self.training else None)
        if g is None and self.share_b:  # one up-projection: B (s z_l + lambda t)
            return self._add_up(out, self.scaling * z_l + t, self.lora_B)
        b_l = self.lora_B if g is None else self.lora_B * g[:, None]  # diag(g) B_L: the row scale folded in
        # one up-projection of width 2r per slice: [B_L | B_C] [s z_l ; lambda t]
        zz = torch.cat([(self.scaling * z_l).reshape(*t.shape[:-1], s, r), t.reshape(*t.shape[:-1], s, r)], -1)
        b = torch.cat([b_l, self.B_C], dim=1)  # (d_out, 2r)
        return self._add_up(out, zz.reshape(*t.shape[:-1], 2 * s * r), b)
