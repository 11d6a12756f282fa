"""Lockstep helpers of the dual encoder: condition pooling, block pairing of two towers and the step schedule
(docs/method.md#dual-encoder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Step = tuple[dict[str, int], int | None]
"""One entry of the lockstep schedule: the block index each stream runs, and the pair index (``None``: a lone
block of one stream, run without exchange)."""


# ----------------------------------------------------------------------------------------------- pooling
def pooling_weights(mask: torch.Tensor, num_prefix: int, mode: str) -> torch.Tensor | None:
    """Per-token weights (B, N) summing to 1 per sample, or ``None`` for ``cls`` (token 0).

    Args:
        mask: (B, N) bool, True = real token.
        num_prefix: leading special tokens excluded by ``mean``.
        mode: ``mean`` | ``mean_with_padding`` | ``cls``.
    """
    if mode == "cls":
        return None
    if mode == "mean_with_padding":
        w = torch.ones(mask.shape, dtype=torch.float32, device=mask.device)
    elif mode == "mean":
        content = torch.arange(mask.shape[1], device=mask.device) >= num_prefix  # (N,)
        w = (mask & content).float()  # (B, N)
    else:
        raise ValueError(f"condition_pooling must be one of ['cls', 'mean', 'mean_with_padding'], got {mode!r}")
    return w / w.sum(dim=1, keepdim=True).clamp_min(1.0)


def pool_tokens(h: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Pools tokens (B, N, C) -> (B, C) with :func:`pooling_weights` (``None``: token 0)."""
    if weights is None:
        return h[:, 0]
    return torch.einsum("bn,bnc->bc", weights.to(h.dtype), h)


# ----------------------------------------------------------------------------------------------- pairing
def resolve_layer_pairs(layer_map: Any, depth_a: int, depth_b: int) -> list[tuple[int, int]]:
    """Block pairs (i_a, i_b) run in lockstep.

    ``None``: (i, i) for equal depths, else an error naming both depths. ``every_other``: the deeper tower
    (exactly twice as deep) fuses only its odd blocks 2k+1 with block k of the other (official AVE: 24-block
    ViT-L with a 12-block audio tower); its block 2k+1 ends at the same relative depth as block k of the
    shallower tower, and its even blocks run without exchange. A list of ``[i_a, i_b]`` pairs, strictly
    increasing in both, is used as given.
    """
    if layer_map is None:
        if depth_a != depth_b:
            raise ValueError(
                f"towers have different depths (a: {depth_a} blocks, b: {depth_b} blocks); set peft.layer_map to "
                "every_other (one tower exactly twice as deep) or a list of [i_a, i_b] block pairs"
            )
        return [(i, i) for i in range(depth_a)]
    if isinstance(layer_map, str):
        if layer_map != "every_other":
            raise ValueError(f"peft.layer_map must be null, 'every_other' or a list of [i_a, i_b], got {layer_map!r}")
        if depth_a == 2 * depth_b:
            return [(2 * k + 1, k) for k in range(depth_b)]
        if depth_b == 2 * depth_a:
            return [(k, 2 * k + 1) for k in range(depth_a)]
        raise ValueError(
            f"peft.layer_map=every_other needs one tower exactly twice as deep as the other, got depths "
            f"a: {depth_a}, b: {depth_b}"
        )
    pairs: list[tuple[int, int]] = []
    for item in layer_map:
        pair = list(item) if isinstance(item, Sequence) and not isinstance(item, str) else None
        if pair is None or len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
            raise ValueError(f"peft.layer_map entries must be [i_a, i_b] integer pairs, got {item!r}")
        i, j = pair
        if not (0 <= i < depth_a and 0 <= j < depth_b):
            raise ValueError(f"peft.layer_map pair {[i, j]} is out of range for depths a: {depth_a}, b: {depth_b}")
        if pairs and (i <= pairs[-1][0] or j <= pairs[-1][1]):
            raise ValueError(
                f"peft.layer_map pairs must increase strictly in both towers, got {pairs[-1]} then {[i, j]}"
            )
        pairs.append((i, j))
    if not pairs:
        raise ValueError("peft.layer_map is an empty list; use null for equal-depth towers")
    return pairs


def schedule(pairs: list[tuple[int, int]], depths: dict[str, int]) -> list[Step]:
    """Execution order of two towers (``depths`` in stream order): before each pair, the lone blocks of each stream
    up to it; after the last pair, the remaining lone blocks."""
    streams = list(depths)
    steps: list[Step] = []
    nxt = dict.fromkeys(streams, 0)
    for k, pair in enumerate(pairs):
        for s, i in zip(streams, pair, strict=True):
            steps += [({s: t}, None) for t in range(nxt[s], i)]
        steps.append((dict(zip(streams, pair, strict=True)), k))
        nxt = {s: i + 1 for s, i in zip(streams, pair, strict=True)}
    for s in streams:
        steps += [({s: t}, None) for t in range(nxt[s], depths[s])]
    return steps


def resolve_indices(indices: Any, n: int, what: str) -> list[int]:
    out = []
    for v in indices:
        if isinstance(v, bool) or not isinstance(v, int) or not -n <= v < n:
            raise ValueError(f"{what} entries must be integers in [{-n}, {n}), got {v!r}")
        out.append(v % n)
    return out


def block_filter(names: list[str], blocks: Sequence[int]):
    """A name filter selecting the modules inside the given blocks, or ``None`` when there is none."""
    if not blocks:
        return None
    prefixes = tuple(names[i] + "." for i in blocks)
    return lambda name: name.startswith(prefixes)
