"""Where the dual encoder's adapters go and their injection (docs/method.md#dual-encoder).

Blocks of an adapted pair get the method's layer; with a ``layer_map`` that leaves blocks of the deeper tower
unpaired (``every_other``), those get plain LoRA at the same rank, alpha and dropout, as the official code (for
``method=lora`` every block is LoRA). An explicit ``peft.layers`` adapts only the chosen pairs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cola.peft import (
    AdapterConfig,
    AdapterLinear,
    InjectionReport,
    PeftSpec,
    find_targets,
    inject_adapters,
    mark_only_adapters_trainable,
)

from .block_steps import STAGES
from .lockstep import block_filter
from .outputs import DualEncoderReport
from .tower import Tower


@dataclass
class Placement:
    """Where one kind of adapter goes in one tower: targets, fused splits, a block filter, the condition width."""

    tower: Tower
    targets: list[str]
    splits: dict[str, int]
    include: Any  # Callable[[str], bool] | None (None: no block of this kind)
    ctx: int | None


def place_adapters(
    towers: Mapping[str, Tower],
    *,
    pairs: Sequence[tuple[int, ...]],
    adapted: Sequence[int],
    all_layers: bool,
    targets: Mapping[str, Sequence[str]],
    out_splits: Mapping[str, Mapping[str, int]],
    ctx: Mapping[str, int | None],
) -> tuple[dict[str, Placement], dict[str, Placement], dict[str, list[int]]]:
    """The paired (method) and unpaired (plain LoRA) placements of every stream, and its unpaired blocks.

    Args:
        towers: stream -> tower, in lockstep order (``pairs`` hold one block index per stream in that order).
        pairs: the block pairs; ``adapted`` the indices of the pairs that get the method's layers.
        all_layers: whether every pair is adapted (no ``peft.layers``): only then do unpaired blocks get LoRA.
        targets: stream -> adapted linear layers; ``out_splits``: stream -> fused layers.
        ctx: stream -> width of the condition its layers take (``None``: nothing).

    Returns:
        ``(main, lone, unpaired)`` keyed by stream.
    """
    main: dict[str, Placement] = {}
    lone: dict[str, Placement] = {}
    unpaired_blocks: dict[str, list[int]] = {}
    for idx, (s, tower) in enumerate(towers.items()):
        paired = [pairs[k][idx] for k in adapted]
        unpaired = sorted(set(range(tower.depth)) - {p[idx] for p in pairs}) if all_layers else []
        unpaired_blocks[s] = unpaired
        names, tgt, spl = tower.block_names(), list(targets.get(s, ())), dict(out_splits.get(s) or {})
        main[s] = Placement(tower, tgt, spl, block_filter(names, paired), ctx[s])
        lone[s] = Placement(tower, tgt, spl, block_filter(names, unpaired), None)
    return main, lone, unpaired_blocks


def inject_placements(
    spec: PeftSpec, streams: Sequence[str], main: dict[str, Placement], lone: dict[str, Placement]
) -> DualEncoderReport:
    """Injects the method's layers into the paired blocks and plain LoRA into the unpaired ones, then freezes
    all but the adapters; a method with a ``derive`` factory (``lora_param_matched``) injects what it derives."""
    report = DualEncoderReport(method=spec.method.name)
    config: AdapterConfig = spec.config
    lone_cfg = config.as_lora()
    if spec.method.derive is not None:
        matched = spec.method.derive(config, planned_layers(config, streams, main, lone, lone_cfg))
        report.lora_rank = matched.config.rank
        report.params_cola, report.params_lora = matched.params_cola, matched.params_lora
        report.param_match = matched.describe()
        config = lone_cfg = matched.config
    for s in streams:
        stream_report = InjectionReport(per_target={t: 0 for t in main[s].targets})
        for place, cfg in ((main[s], config.for_stream(s)), (lone[s], lone_cfg)):
            if place.include is None:
                continue
            extra = inject_adapters(
                place.tower.model,
                cfg,
                place.targets,
                context_dim=place.ctx,
                out_splits=place.splits,
                include=place.include,
            )
            stream_report.modules.update(extra.modules)
            for t, n in extra.per_target.items():
                stream_report.per_target[t] = stream_report.per_target.get(t, 0) + n
            stream_report.params_added += extra.params_added
        mark_only_adapters_trainable(main[s].tower.model)
        report.towers[s] = stream_report
    return report


def planned_layers(config: AdapterConfig, streams: Sequence[str], main, lone, lone_cfg) -> list[tuple]:
    """(config, d_in, d_out, context width, splits) of every layer the parsed config would adapt: paired blocks
    with the config resolved per stream, unpaired blocks with plain LoRA (docs/method.md#lora-param-matched)."""
    planned = []
    for s in streams:
        for place, cfg in ((main[s], config.for_stream(s)), (lone[s], lone_cfg)):
            if place.include is None:
                continue
            for _, (target, linear) in find_targets(place.tower.model, place.targets, include=place.include).items():
                splits = place.splits.get(target, 1)
                planned.append((cfg, linear.in_features, linear.out_features, place.ctx, splits))
    return planned


def stage_groups(tower: Tower, block_index: int) -> dict[str, list[AdapterLinear]]:
    """The adapter layers of one block that receive the other stream's states, by stage (qkv, proj, mlp)."""
    groups: dict[str, list[AdapterLinear]] = {s: [] for s in STAGES}
    for rel, m in tower.blocks[block_index].named_modules():
        if isinstance(m, AdapterLinear) and m.receives:
            groups[tower.stage_of(rel)].append(m)
    return groups
