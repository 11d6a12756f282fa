"""The hypernetwork Phi of CoLA (docs/method.md#hypernetwork): a per-sample r x r core from the other stream's
condition.

    Phi(c) = LN2( reshape_{r x r}( drop( fc2( LN1( drop( GELU( fc1(c) ) ) ) ) ) ) )

with ``fc1: d_c -> floor(d_c / reduction)``, ``fc2: -> r * r`` (row-major: ``Phi[i, j] = out[i * r + j]``) and both
LayerNorms at eps 1e-6, as the official ``Mlp`` (whose first norm is called ``norm``; ours is ``norm1``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HyperNetwork(nn.Module):
    """Maps a condition ``c`` (B, d_c) to ``Phi`` (B, r, r).

    Args:
        context_dim: d_c, the width of the other stream.
        rank: r.
        reduction: hidden width is ``context_dim // reduction`` (must be >= 1).
        dropout: dropout after the activation and after fc2 (official: 0).
        init: ``trunc_normal`` (official) — fc1/fc2 weights truncated normal with std 0.02 (cut at +-2, as timm's
            ``trunc_normal_``), biases 0, LayerNorms weight 1, bias 0: the official host models re-initialise every
            ``nn.Linear`` they contain this way, hypernetworks included; ``torch`` keeps ``nn.Linear``'s default
            (kaiming-uniform weights, uniform biases).
    """

    def __init__(
        self, context_dim: int, rank: int, *, reduction: int = 16, dropout: float = 0.0, init: str = "trunc_normal"
    ) -> None:
        super().__init__()
        hidden = context_dim // reduction
        if hidden < 1:
            raise ValueError(
                f"reduction={reduction} leaves no hidden unit for context_dim={context_dim}; "
                f"use reduction <= {context_dim}"
            )
        self.rank = rank
        self.fc1 = nn.Linear(context_dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(hidden, eps=1e-6)
        self.fc2 = nn.Linear(hidden, rank * rank)
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm((rank, rank), eps=1e-6)
        if init == "trunc_normal":
            for fc in (self.fc1, self.fc2):
                nn.init.trunc_normal_(fc.weight, std=0.02, a=-2.0, b=2.0)
                nn.init.zeros_(fc.bias)
        elif init != "torch":
            raise ValueError(f"hypernet_init must be one of ['torch', 'trunc_normal'], got {init!r}")

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        # the submodules' functions called directly: a layer runs this in every forward, and at small shapes the
        # seven module calls cost more than the arithmetic
        n1, n2 = self.norm1, self.norm2
        h = _drop(self.drop1, F.gelu(F.linear(c, self.fc1.weight, self.fc1.bias)))  # (B, h)
        h = F.layer_norm(h, n1.normalized_shape, n1.weight, n1.bias, n1.eps)
        phi = _drop(self.drop2, F.linear(h, self.fc2.weight, self.fc2.bias)).reshape(c.shape[0], self.rank, self.rank)
        return F.layer_norm(phi, n2.normalized_shape, n2.weight, n2.bias, n2.eps)  # (B, r, r)


def _drop(drop: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """``drop(x)``, skipped when it is the identity (p = 0, the default, or eval)."""
    return drop(x) if drop.p > 0 and drop.training else x


_STACKED = (
    "fc1.weight",
    "fc1.bias",
    "norm1.weight",
    "norm1.bias",
    "fc2.weight",
    "fc2.bias",
    "norm2.weight",
    "norm2.bias",
)


def _stacked_params(nets: nn.ModuleList) -> dict[str, torch.Tensor]:
    """The S hypernetworks' parameters stacked along a new first axis, by name (``fc1.weight``: (S, h, d_c), ...).

    Under autograd they are stacked on every call (the stack is part of the graph). Without autograd (evaluation,
    inference, or hypernetworks that do not train: ``condition=random_frozen``) the stacks are kept on ``nets`` and
    rebuilt only when a parameter changed (its storage or its version counter, which every in-place update such as an
    optimiser step or ``load_state_dict`` bumps), so an evaluation pass stacks once, not once per forward. Under
    ``torch.compile`` the stacks are part of the graph (no cache: its key reads storage pointers).
    """
    params = [
        {k: getattr(getattr(n, k.split(".")[0]), k.split(".")[1]) for k in _STACKED} for n in nets
    ]  # direct attribute reads: this runs in every forward of a fused layer
    training = torch.is_grad_enabled() and any(p[k].requires_grad for p in params for k in _STACKED)
    # a compiled graph stacks every call: the cache's pointer/version key and the attribute it sets cannot be traced
    if training or torch.compiler.is_compiling():
        return {k: torch.stack([p[k] for p in params]) for k in _STACKED}
    key = tuple((p[k].data_ptr(), p[k]._version, p[k].dtype, p[k].device) for p in params for k in _STACKED)
    cached = getattr(nets, "_cola_stacked", None)
    if cached is None or cached[0] != key:
        cached = (key, {k: torch.stack([p[k] for p in params]) for k in _STACKED})
        nets._cola_stacked = cached  # a plain attribute: not a buffer, never saved
    return cached[1]


def stacked_hypernet_forward(nets: nn.ModuleList, c: torch.Tensor) -> torch.Tensor:
    """Runs S hypernetworks on the same condition as one batched MLP.

    Equivalent to ``torch.stack([net(c) for net in nets])`` (tested) but one GEMM per layer instead of S:
    the q/k/v hypernetworks of a fused layer share their input. Without autograd the stacked weights are built
    once and reused while the parameters stay unchanged (:func:`_stacked_params`).

    Returns:
        Phi for every slice, (S, B, r, r).
    """
    first = nets[0]
    r = first.rank
    w = _stacked_params(nets)
    h = torch.einsum("bd,shd->sbh", c, w["fc1.weight"]) + w["fc1.bias"][:, None]  # (S, B, h)
    h = _drop(first.drop1, F.gelu(h))
    h = F.layer_norm(h, h.shape[-1:], eps=first.norm1.eps)
    h = h * w["norm1.weight"][:, None] + w["norm1.bias"][:, None]
    out = _drop(first.drop2, torch.baddbmm(w["fc2.bias"][:, None], h, w["fc2.weight"].transpose(1, 2)))  # (S, B, r*r)
    phi = F.layer_norm(out.reshape(len(nets), c.shape[0], r, r), (r, r), eps=first.norm2.eps)  # (S, B, r, r)
    return phi * w["norm2.weight"][:, None] + w["norm2.bias"][:, None]


class MultiSourceHyperNetwork(nn.Module):
    """``peft.condition_fusion=per_stream``: one hypernetwork per source stream, their cores summed,
    ``Phi(c) = sum_o Phi_o(c_o)`` where ``c = [c_1, ..., c_M]`` is the concatenation of the sources' pooled states
    (docs/method.md#n-streams).

    Args:
        context_dims: the width of each source, in the order the encoder concatenates them.
        rank, reduction, dropout, init: as :class:`HyperNetwork` (``reduction`` applies to each source's width).
    """

    def __init__(self, context_dims: tuple[int, ...], rank: int, **kwargs) -> None:
        super().__init__()
        self.context_dims = tuple(int(d) for d in context_dims)
        self.rank = rank
        self.nets = nn.ModuleList(HyperNetwork(d, rank, **kwargs) for d in self.context_dims)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        parts = c.split(self.context_dims, dim=-1)
        return torch.stack([net(p) for net, p in zip(self.nets, parts, strict=True)]).sum(dim=0)
