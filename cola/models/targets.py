"""Adapter targets per backbone family: which linear layers of a block get adapters (docs/method.md#targets).

The family classes of :mod:`cola.models.block_steps` own their layer names (``target_layers``, ``fused_layers``)
and the stage of each (``stage_rules``); this module selects from them, so ``configs/model/*.yaml`` (through the
``${cola.targets:...}`` / ``${cola.out_splits:...}`` resolvers), ``scripts/benchmark.py`` and the tests read one
source. ``configs/targets/*.yaml`` pick block stages (``model.target_stages``), never layer names.
"""

from __future__ import annotations

from collections.abc import Sequence

from cola.dicts import check_choice

from .block_steps import FAMILIES, STAGES, BlockSteps


def _steps(family: str) -> BlockSteps:
    check_choice("family", family, sorted(FAMILIES))
    return FAMILIES[family]()


def family_targets(family: str, stages: Sequence[str] | None = None) -> list[str]:
    """The linear layers of a ``family`` block in the given stages, in paper order (q, k, v, out-proj, fc1, fc2).

    Args:
        family: ``vit`` | ``bert`` | ``ast``.
        stages: block stages to adapt, a subset of ``("qkv", "proj", "mlp")`` (``model.target_stages``);
            ``None`` means all of them.

    Returns:
        Layer names relative to a block, e.g. ``["attn.qkv", "attn.proj"]`` for ``vit`` and ``["qkv", "proj"]``.

    Raises:
        ValueError: an unknown family or stage (named with the choices).
    """
    steps = _steps(family)
    if isinstance(stages, str):  # model.target_stages=mlp on the command line
        stages = [stages]
    chosen = STAGES if stages is None else tuple(str(s) for s in stages)
    if any(s not in STAGES for s in chosen):
        raise ValueError(f"model.target_stages must be a subset of {list(STAGES)}, got {list(chosen)}")
    return [name for name in steps.target_layers if steps.stage_of(name) in chosen]


def family_out_splits(family: str) -> dict[str, int]:
    """The fused layers of a ``family`` block and their output slices, e.g. ``{"attn.qkv": 3}`` for ``vit``."""
    return dict(_steps(family).fused_layers)
