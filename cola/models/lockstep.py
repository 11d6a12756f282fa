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
    return torch.bmm(weights.to(h.dtype).unsqueeze(1), h).squeeze(1)  # (B, 1, N) @ (B, N, C)


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


# ----------------------------------------------------------------------------------------------- N streams
FUSIONS = ("concat", "mean", "per_stream")
"""How the pooled states of several source streams become one condition (docs/method.md#n-streams)."""


def resolve_layer_groups(layer_map: Any, depths: dict[str, int]) -> list[tuple[int, ...]]:
    """Block groups run in lockstep, one block index per stream (``depths`` in stream order).

    Two streams: :func:`resolve_layer_pairs` (``layer_map`` ``None`` | ``every_other`` | a list of pairs). More:
    ``layer_map`` is ``None`` (every tower equally deep) or a mapping ``{stream: map}`` pairing each other stream
    with the *first* one (``map`` as for two towers, ``None`` for an equally deep tower); a group is a block of the
    first stream that every other stream pairs, and blocks outside every group run alone (plain LoRA).
    """
    streams = list(depths)
    if len(streams) == 2:
        return resolve_layer_pairs(layer_map, *depths.values())
    first, rest = streams[0], streams[1:]
    if layer_map is None:
        if len(set(depths.values())) != 1:
            raise ValueError(
                f"towers have different depths {depths}; set peft.layer_map to a mapping {{stream: every_other | "
                f"[[i_{first}, i_stream], ...]}} pairing each other stream with the {first} tower"
            )
        return [(i,) * len(streams) for i in range(depths[first])]
    if not isinstance(layer_map, dict) or not set(layer_map) <= set(rest):
        raise ValueError(
            f"peft.layer_map with {len(streams)} towers must be null or a mapping from {rest} to a pairing with the "
            f"{first} tower (null | every_other | [[i_{first}, i_stream], ...]), got {layer_map!r}"
        )
    per = {s: dict(resolve_layer_pairs(layer_map.get(s), depths[first], depths[s])) for s in rest}
    common = sorted(set.intersection(*(set(p) for p in per.values())))
    if not common:
        raise ValueError(f"peft.layer_map {layer_map!r} leaves no {first} block paired with every other stream")
    return [(i, *(per[s][i] for s in rest)) for i in common]


def resolve_sources(
    streams: Sequence[str], requested: Any, *, exchange: str | None, anchor: str | None
) -> dict[str, list[str]]:
    """For every stream whose layers take another stream's state, the streams they take it from.

    Conditions (CoLA): ``requested`` is ``None`` (every other stream) or ``{stream: [sources]}``
    (``peft.condition_sources``; streams left out take every other stream). Tokens (MokA): the other stream with two
    towers; with more, every stream but the anchor queries the anchor's tokens (MokA's audio-visual-text design).
    """
    if exchange is None:
        return {}
    if exchange == "tokens":
        if len(streams) == 2:
            return {s: [o] for s, o in zip(streams, reversed(streams), strict=True)}
        if anchor is None:
            raise ValueError(
                f"MokA with {len(streams)} towers queries one anchor stream (the text tower); none is set among "
                f"{list(streams)}"
            )
        return {s: [anchor] for s in streams if s != anchor}
    sources = {s: [o for o in streams if o != s] for s in streams}
    if requested is None:
        return sources
    if not isinstance(requested, dict):
        raise ValueError(f"peft.condition_sources must be null or a mapping {{stream: [sources]}}, got {requested!r}")
    for s, src in requested.items():
        if s not in streams:
            raise ValueError(f"peft.condition_sources names unknown stream {s!r}; the streams are {list(streams)}")
        src = [src] if isinstance(src, str) else list(src)
        bad = [o for o in src if o not in sources[s]]
        if not src or bad:
            raise ValueError(
                f"peft.condition_sources.{s} must be a non-empty list of other streams {sources[s]}, got {src!r}"
            )
        sources[s] = src
    return sources


def match_rows(c: torch.Tensor, rows_from: int, rows_to: int) -> torch.Tensor:
    """A condition pooled on a stream with ``rows_from`` rows per sample, for a stream with ``rows_to``: repeated
    (the question's text for each of its video segments) or averaged over the sample's rows (the segments for the
    question's text)."""
    if rows_from == rows_to:
        return c
    if rows_from < rows_to:
        if rows_to % rows_from:
            raise ValueError(f"rows per sample {rows_to} is not a multiple of {rows_from}")
        return c.repeat_interleave(rows_to // rows_from, dim=0)
    if rows_from % rows_to:
        raise ValueError(f"rows per sample {rows_from} is not a multiple of {rows_to}")
    return c.reshape(-1, rows_from // rows_to, c.shape[-1]).mean(dim=1)


def fuse(conditions: list[torch.Tensor], mode: str) -> torch.Tensor:
    """One condition from the pooled states of the source streams: ``concat`` and ``per_stream`` concatenate (the
    layer's hypernetworks split them again per source), ``mean`` averages (equal widths)."""
    if len(conditions) == 1:
        return conditions[0]
    if mode == "mean":
        return torch.stack(conditions).mean(dim=0)
    return torch.cat(conditions, dim=-1)
