"""Dual encoder: two frozen towers, named by stream (``vision``, ``text``, ``audio``), run block by block in lockstep,
exchanging conditions (docs/method.md#dual-encoder).

For each pair of blocks (block i of the first stream, block j of the second; see ``layer_map``) the encoder runs
the three stages of :mod:`cola.models.block_steps` on every stream in turn and, before each stage, hands every
adapted layer of stream m what it needs from the other stream m′ at that point:

| ``propagation``            | qkv gets  | out-proj gets | fc1, fc2 get   |
|----------------------------|-----------|---------------|----------------|
| ``uniform``                | pool(x′)  | pool(x′)      | pool(x′)       |
| ``module_wise``            | pool(x′)  | pool(x′)      | pool(x′_attn)  |
| ``progressive`` (official) | pool(x′)  | pool(ctx′)    | pool(x′_attn)  |

x′ = the other stream's block input, ctx′ = its attention context just before its out-projection, x′_attn =
its post-attention residual stream. What a layer receives is what its method exchanges
(:class:`cola.peft.Method`): ``condition`` layers (CoLA) get the pooled vector through ``set_condition`` (not
detached: gradients cross streams); ``tokens`` layers (MokA) get the unpooled tokens and their key mask through
``set_context``; methods that exchange nothing get nothing. A pair's conditions are cleared as soon as the pair
has run (autograd keeps what backward needs), and everything in ``finally``.

Gradient checkpointing (``gradient_checkpointing=True``): each step of the lockstep schedule (a block pair, or
a lone block of the deeper tower) runs under non-reentrant :func:`torch.utils.checkpoint.checkpoint` while
training with gradients enabled: only the residual streams between steps are kept and each step is recomputed
in backward, conditions included (the step re-hands them), so the outputs and gradients are the same as
without it, for less activation memory and about one more forward of compute.

Pooling (``condition_pooling``): ``mean`` averages the real tokens (text padding masked) with the stream's
prefix tokens (CLS / registers / AST's two special tokens) excluded; ``mean_with_padding`` averages every
position (official grounding code); ``cls`` takes token 0 (official audio-visual code).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from cola.peft import (
    STREAMS,
    AdapterLinear,
    PeftSpec,
    build_peft,
    intra_after_optimizer_step,
    intra_budget,
    intra_groups,
    intra_prepare,
    intra_training_losses,
    per_stream,
)

from .lockstep import (
    FUSIONS,
    Step,
    fuse,
    match_rows,
    pool_tokens,
    pooling_weights,
    resolve_indices,
    resolve_layer_groups,
    resolve_sources,
    schedule,
)
from .outputs import DualEncoderOutput, DualEncoderReport
from .placement import inject_placements, place_adapters, stage_groups
from .tower import Tower

log = logging.getLogger(__name__)

LEGACY_TOWER_NAMES = ("tower_a", "tower_b")
"""Attribute names of the towers before they were named by stream; checkpoints and adapter files written then
still load (the names map, in order, to the encoder's streams)."""


@dataclass
class _StreamState:
    """One stream's per-batch state that the lockstep steps read: masks and what its layers hand to the other."""

    attn_mask: Any
    pool_weights: torch.Tensor | None  # pools this stream's tokens into the other stream's conditions
    key_mask: torch.Tensor | None  # MokA key mask (None: every token is real)


# ----------------------------------------------------------------------------------------------- encoder
class DualEncoder(nn.Module):
    """Two towers in lockstep with cross-modal adapters injected by :mod:`cola.peft`.

    Args:
        towers: the towers keyed by stream name (``vision``, ``text``, ``audio``), in the order the lockstep
            pairs and ``layer_map`` count them (vision first in every task); stored as ``self.towers``.
        peft: the parsed ``peft`` node, a :class:`cola.peft.PeftSpec` (``instantiate(cfg.peft)``), or the node as a
            plain dict (``configs/peft/<method>.yaml``), parsed here; ``None`` = frozen. ``layers`` / ``layer_map``
            may sit there too (the arguments below win when not ``None``).
        targets: stream -> adapted linear layers, as name suffixes (e.g. ``["attn.qkv", "mlp.fc1"]``).
        out_splits: stream -> fused layers, e.g. ``{"vision": {"attn.qkv": 3}}``.
        layers: indices of the block pairs to adapt (``None`` = all); with equal depths and no
            ``layer_map`` a pair index is the block index. Other blocks run unadapted.
        layer_map: ``None``, ``every_other`` or a list of ``[i, j]`` (see :func:`resolve_layer_pairs`).
        anchor: for methods whose layers query the other stream one way (MokA), the stream the other queries:
            a stream name (vision-language: ``text``; its layers are LoRA-shaped unless ``bidirectional``),
            ``None`` (both streams query each other: audio-visual), or ``"auto"`` (the stream whose tower family
            is an anchor, ``Tower.anchor``: the text tower, if exactly one; else ``None``).
        gradient_checkpointing: recompute each lockstep step in backward instead of keeping its activations
            (training only; same results, less memory, about one extra forward of compute).

    Attributes:
        peft: the :class:`cola.peft.PeftSpec`; ``adapter_config`` its adapter config (``None``: frozen, full).
        streams: the stream names, in order. report: a :class:`DualEncoderReport`.
        layer_pairs: the block pairs (one index per stream); ``adapted_pairs`` the pair indices with adapters.

    Raises:
        ValueError: unknown method, key or stream, depth mismatch without ``layer_map``, bad ``layers`` / ``anchor``.
    """

    def __init__(
        self,
        towers: Mapping[str, Tower],
        *,
        peft: PeftSpec | Mapping[str, Any] | None = None,
        targets: Mapping[str, Sequence[str]] | None = None,
        out_splits: Mapping[str, Mapping[str, int]] | None = None,
        layers: Sequence[int] | None = None,
        layer_map: Any = None,
        anchor: str | None = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self.towers = nn.ModuleDict(_check_towers(towers))
        self.streams = tuple(self.towers)
        self._rows = dict.fromkeys(self.streams, 1)  # rows per sample of each stream in the current forward
        spec = peft if isinstance(peft, PeftSpec) else build_peft(**dict(peft or {}))
        self.peft = spec  # the parsed peft node: what the task asks and its checkpoints store (spec.to_dict())
        self.method, self.adapter_config = spec.method.name, spec.config
        self.exchange = spec.method.exchange  # what adapted layers take from the other stream
        layers = spec.layers if layers is None else layers
        layer_map = spec.layer_map if layer_map is None else layer_map

        self._pair_blocks(layers, layer_map)
        self.propagation = getattr(self.adapter_config, "propagation", "progressive")
        self.condition_pooling = getattr(self.adapter_config, "condition_pooling", "mean")
        # keyed by the *source* stream: pooling[s] pools stream s's tokens into the other stream's conditions
        self.pooling = {s: per_stream("condition_pooling", self.condition_pooling, s) for s in self.streams}
        self.anchor = _resolve_anchor(anchor, self.towers)
        self.condition_fusion = getattr(self.adapter_config, "condition_fusion", "concat")
        if self.condition_fusion not in FUSIONS:
            raise ValueError(f"peft.condition_fusion must be one of {list(FUSIONS)}, got {self.condition_fusion!r}")
        # stream -> the streams its layers take states from (lora_param_matched sizes its CoLA by them too)
        kind = self.exchange or ("condition" if self.adapter_config is not None else None)
        requested = getattr(self.adapter_config, "condition_sources", None)
        self.sources = resolve_sources(self.streams, requested, exchange=kind, anchor=self.anchor)
        ctx = {s: self._context_dim(s) for s in self.streams}

        # paired blocks get the method's layers, blocks a layer_map leaves unpaired plain LoRA (placement.py)
        main, lone, self.unpaired_blocks = place_adapters(
            self.towers,
            pairs=self.layer_pairs,
            adapted=self.adapted_pairs,
            all_layers=layers is None,
            targets=dict(targets or {}),
            out_splits=dict(out_splits or {}),
            ctx=ctx,
        )
        if spec.method.injects:
            self.report = inject_placements(spec, self.streams, main, lone)
        else:
            self.report = DualEncoderReport(method=self.method)
            for tower in self.towers.values():
                tower.requires_grad_(spec.method.trains_towers)
        # the layers of each intra variant: what the training hooks below hand the variant (one object per name)
        self._intra_groups = intra_groups(self)
        self.report.budget = intra_budget(self._intra_groups)
        log.info("%s", self.report)

        self._groups = self._receiving_groups()
        self._exchange_layers = [
            m for g in self._groups.values() for stages in g.values() for ms in stages.values() for m in ms
        ]
        self.register_load_state_dict_pre_hook(_load_legacy_names)

    # ------------------------------------------------------------------------------------------ building
    def _pair_blocks(self, layers: Sequence[int] | None, layer_map: Any) -> None:
        """Sets the block pairs, the indices of the adapted ones and the lockstep schedule."""
        depths = {s: t.depth for s, t in self.towers.items()}
        self.layer_pairs = resolve_layer_groups(layer_map, depths)
        all_pairs = list(range(len(self.layer_pairs)))
        self.adapted_pairs = (
            all_pairs if layers is None else sorted(set(resolve_indices(layers, len(all_pairs), "peft.layers")))
        )
        self._schedule: list[Step] = schedule(self.layer_pairs, depths)

    def _receiving_groups(self) -> dict[int, dict[str, dict[str, list[AdapterLinear]]]]:
        """Adapter layers of each adapted pair, by stream and stage, that receive the other stream's states."""
        if self.exchange is None:
            return {}
        return {
            k: {s: stage_groups(t, self.layer_pairs[k][idx]) for idx, (s, t) in enumerate(self.towers.items())}
            for k in self.adapted_pairs
        }

    def _context_dim(self, stream: str) -> int | tuple[int, ...] | None:
        """Width of what ``stream``'s layers take from the other streams (``None``: they take nothing): one width,
        their sum (``condition_fusion=concat``), or the tuple of source widths (``per_stream`` with several
        sources: one hypernetwork per source)."""
        queries = self.adapter_config is not None and self.adapter_config.queries_other(anchor=self.anchor == stream)
        if not queries:
            return None
        if stream not in self.sources:
            raise ValueError(
                f"the {stream} stream is MokA's anchor; with {len(self.streams)} towers it cannot query the others "
                "(set peft.bidirectional=false)"
            )
        sources = [self.towers[o] for o in self.sources[stream]]
        for other in sources:
            if self.exchange is not None and self.propagation == "progressive":
                if other.context_size != other.hidden_size:
                    raise ValueError(
                        f"propagation=progressive hands over the {other.modality} tower's attention context (width "
                        f"{other.context_size}) but conditions are sized to its hidden width {other.hidden_size}"
                    )
        widths = [t.hidden_size for t in sources]
        if len(widths) == 1 or self.exchange == "tokens":
            return widths[0]
        if self.condition_fusion == "mean":
            if len(set(widths)) != 1:
                raise ValueError(
                    f"peft.condition_fusion=mean averages the {stream} stream's sources {self.sources[stream]}, whose "
                    f"widths differ ({widths}); use concat or per_stream"
                )
            return widths[0]
        return tuple(widths) if self.condition_fusion == "per_stream" else sum(widths)

    # ------------------------------------------------------------------------------------------ forward
    def _give(self, layers: list[AdapterLinear], stream: str, h: dict[str, torch.Tensor], st, cache: dict, point: str):
        """Gives one stage's layers of ``stream`` the states ``h`` (at ``point``: x, ctx, x_attn) of its sources:
        the fused pooled condition (each source pooled once per point) or the anchor's tokens and key mask."""
        if not layers:
            return
        if self.exchange == "condition":
            conditions = []
            for o in self.sources[stream]:
                if (point, o) not in cache:
                    cache[(point, o)] = pool_tokens(h[o], st[o].pool_weights)  # (B_o, C_o)
                conditions.append(match_rows(cache[(point, o)], self._rows[o], self._rows[stream]))
            c = fuse(conditions, self.condition_fusion)  # (B_stream, d_c)
            for m in layers:
                m.set_condition(c, group=self._rows[stream])
            return
        (o,) = self.sources[stream]
        for m in layers:  # tokens: unpooled (B, M, C_other) and their key mask
            m.set_context(h[o], st[o].key_mask)

    def _pair(self, k: int, blocks: dict[str, int], x: dict[str, torch.Tensor], st: dict[str, _StreamState]):
        """One block group in lockstep (docs/method.md#propagation); returns the streams' block outputs."""
        towers = self.towers
        block = {s: towers[s].blocks[i] for s, i in blocks.items()}
        groups = self._groups.get(k)
        if groups is None:  # nothing to exchange in this group
            return {s: towers[s].steps(block[s], x[s], st[s].attn_mask) for s in blocks}
        cache: dict = {}
        # (a) qkv <- x'
        for s in blocks:
            self._give(groups[s]["qkv"], s, x, st, cache, "x")
        ctx = {s: towers[s].steps.attention_context(block[s], x[s], st[s].attn_mask) for s in blocks}  # (B, N, C)
        # (b) out-proj <- ctx' (progressive) or x'
        progressive = self.propagation == "progressive"
        for s in blocks:
            self._give(groups[s]["proj"], s, ctx if progressive else x, st, cache, "ctx" if progressive else "x")
        x_attn = {s: towers[s].steps.attention_out(block[s], x[s], ctx[s]) for s in blocks}
        # (c) fc1, fc2 <- x' (uniform) or x'_attn
        uniform = self.propagation == "uniform"
        for s in blocks:
            self._give(groups[s]["mlp"], s, x if uniform else x_attn, st, cache, "x" if uniform else "x_attn")
        out = {s: towers[s].steps.mlp_out(block[s], x_attn[s]) for s in blocks}
        self._clear(m for stages in groups.values() for ms in stages.values() for m in ms)  # autograd holds the rest
        return out

    def _step(self, step: Step, x: dict[str, torch.Tensor], st: dict[str, _StreamState]) -> dict[str, torch.Tensor]:
        """One entry of the lockstep schedule: a lone block of one stream, or a block pair."""
        blocks, k = step
        if k is None:
            (s, i), *_ = blocks.items()
            tower = self.towers[s]
            return {**x, s: tower.steps(tower.blocks[i], x[s], st[s].attn_mask)}
        return {**x, **self._pair(k, blocks, x, st)}

    def forward(
        self,
        inputs: Mapping[str, Mapping[str, torch.Tensor]],
        *,
        return_layers: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        rows_per_sample: int | Mapping[str, int] = 1,
    ) -> DualEncoderOutput:
        """Runs the towers in lockstep.

        Args:
            inputs: stream -> that tower's inputs (vision: ``{"pixel_values": (B, 3, H, W)}``; text:
                ``{"input_ids": (B, L), "attention_mask": (B, L)}``; audio: ``{"input_values": (B, T, 128)}``).
            return_layers: block indices (negative counts from the end) whose outputs, before the final norm,
                are returned in ``layers``: one list for every stream, or a mapping stream -> indices (towers of
                unequal depth; streams left out return none).
            rows_per_sample: consecutive batch rows that belong to one sample (the 10 seconds of an AVE video, the
                5 frames of an AVS clip); the ``shuffled`` control then takes conditions from another sample. A
                mapping gives it per stream when streams have different row counts (AVQA: ``{vision: T, audio: T,
                text: 1}``): a condition pooled on T rows per sample is averaged over them for a 1-row stream, and
                repeated T times the other way.

        Returns:
            A :class:`DualEncoderOutput`.
        """
        missing = [s for s in self.streams if s not in inputs]
        if missing:
            raise ValueError(f"inputs lack stream(s) {missing}; the encoder's streams are {list(self.streams)}")
        want = self._wanted_layers(return_layers)
        saved: dict[str, dict[int, torch.Tensor]] = {s: {} for s in want}
        x, masks, st = {}, {}, {}
        for s, tower in self.towers.items():
            x[s], masks[s] = tower.embed(inputs[s])  # (B, N, C), (B, N)
            st[s] = _StreamState(
                attn_mask=tower.attention_mask(x[s], masks[s]),
                pool_weights=pooling_weights(masks[s], tower.num_prefix_tokens, self.pooling[s]),
                key_mask=masks[s] if tower.has_padding else None,
            )
        self._rows = _rows_per_stream(rows_per_sample, self.streams)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        try:
            for step in self._schedule:
                if recompute:  # recompute whole steps (no early stop): each ends by clearing its conditions
                    with set_checkpoint_early_stop(False):
                        x = checkpoint(self._step, step, x, st, use_reentrant=False)
                else:
                    x = self._step(step, x, st)
                for s, i in step[0].items():
                    if s in want and i in want[s]:
                        saved[s][i] = x[s]
        finally:
            self.clear_conditions()
        return DualEncoderOutput(
            tokens={s: t.finalize(x[s]) for s, t in self.towers.items()},
            masks=masks,
            layers={s: [saved[s][i] for i in idx] for s, idx in want.items()},
            num_prefix={s: t.num_prefix_tokens for s, t in self.towers.items()},
        )

    def _wanted_layers(self, return_layers) -> dict[str, list[int]]:
        if return_layers is None:
            return {}
        if not isinstance(return_layers, Mapping):
            return_layers = dict.fromkeys(self.streams, return_layers)
        unknown = sorted(set(return_layers) - set(self.streams))
        if unknown:
            raise ValueError(f"return_layers names unknown stream(s) {unknown}; streams are {list(self.streams)}")
        return {
            s: resolve_indices(idx, self.towers[s].depth, f"return_layers[{s!r}]") for s, idx in return_layers.items()
        }

    # ------------------------------------------------------------------------------------------ intra variants
    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Terms the intra variants add to the training loss, by name (AdaLoRA: ``orth_reg``); empty for the others.
        The task adds them to its loss (:meth:`cola.tasks.base.DualStreamTask.training_step`)."""
        return intra_training_losses(self._intra_groups)

    def prepare_training(self, total_steps: int) -> None:
        """Hands the intra variants the run's number of optimiser steps (AdaLoRA's budget schedule needs it); raises
        ``ValueError`` naming the key when the run is too short for one."""
        intra_prepare(self._intra_groups, total_steps)

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Runs the intra variants' hooks after optimiser step ``step`` (0-based, gradients still in ``.grad``)
        of ``total_steps`` (AdaLoRA: importance, budget and masks, HF peft's ``update_and_allocate``)."""
        intra_after_optimizer_step(self._intra_groups, step, total_steps)

    def intra_budget(self) -> dict[str, Any] | None:
        """The adaptive intra variant's rank budget now (initial, target, current ranks; parameters at each; ranks
        per layer), ``None`` without one."""
        return intra_budget(self._intra_groups)

    def clear_conditions(self) -> None:
        """Drops every condition / context handed to the adapters (no tensor of a past batch stays referenced)."""
        self._clear(self._exchange_layers)

    @staticmethod
    def _clear(layers) -> None:
        for m in layers:
            m.clear_exchange()

    def upgrade_state_dict(self, state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """``state`` with names of the letter-named towers (``tower_a.``, ``tower_b.``) under ``prefix`` renamed to
        ``towers.<stream>.`` (checkpoints and adapter files written before streams were named)."""
        renames = {f"{prefix}{old}.": f"{prefix}towers.{s}." for old, s in zip(LEGACY_TOWER_NAMES, self.streams)}
        olds = tuple(renames)
        if not any(k.startswith(olds) for k in state):
            return state
        out = {}
        for k, v in state.items():
            old = next((o for o in olds if k.startswith(o)), None)
            out[k if old is None else renames[old] + k[len(old) :]] = v
        return out

    def extra_repr(self) -> str:
        return (
            f"streams={list(self.streams)}, method={self.method}, propagation={self.propagation}, "
            f"condition_pooling={self.condition_pooling}, pairs={len(self.layer_pairs)}, "
            f"adapted={len(self.adapted_pairs)}, gradient_checkpointing={self.gradient_checkpointing}"
        )


def _load_legacy_names(module: DualEncoder, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: renames letter-named tower keys in place (see ``upgrade_state_dict``)."""
    new = module.upgrade_state_dict(state_dict, prefix)
    if new is not state_dict:
        state_dict.clear()
        state_dict.update(new)


def _rows_per_stream(rows: int | Mapping[str, int], streams: Sequence[str]) -> dict[str, int]:
    if not isinstance(rows, Mapping):
        return dict.fromkeys(streams, int(rows))
    unknown = sorted(set(rows) - set(streams))
    if unknown:
        raise ValueError(f"rows_per_sample names unknown stream(s) {unknown}; streams are {list(streams)}")
    return {s: int(rows.get(s, 1)) for s in streams}


def _check_towers(towers: Mapping[str, Tower]) -> dict[str, Tower]:
    towers = dict(towers)
    if len(towers) < 2:
        raise ValueError(f"the encoder runs two or more towers, got {len(towers)}: {list(towers)}")
    for name, tower in towers.items():
        if not isinstance(tower, Tower):
            raise TypeError(f"towers must be cola.models.Tower, got {type(tower).__name__} for {name!r}")
        if name not in STREAMS:
            raise ValueError(f"tower names are stream names {list(STREAMS)}, got {name!r}")
    return towers


def _resolve_anchor(anchor: str | None, towers: Mapping[str, Tower]) -> str | None:
    choices = [*towers, None, "auto"]
    if anchor not in choices:
        raise ValueError(f"anchor must be one of {choices}, got {anchor!r}")
    if anchor == "auto":  # the stream whose family others query one way (Tower.anchor: the text tower)
        anchors = [s for s, t in towers.items() if t.anchor]
        return anchors[0] if len(anchors) == 1 else None
    return anchor
