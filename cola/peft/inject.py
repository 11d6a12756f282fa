"""Injection of adapter layers by module name, trainability, merging and parameter counting."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import AdapterConfig
from .layers import AdapterLinear, LowRankLinear
from .methods import ADAPTER_LAYERS, ADAPTER_PREFIXES, UP_PROJECTIONS, layer_for
from .variants import IntraVariant


@dataclass
class InjectionReport:
    """What :func:`inject_adapters` did: adapted module names, per-target counts and parameters added."""

    modules: dict[str, nn.Module] = field(default_factory=dict)
    per_target: dict[str, int] = field(default_factory=dict)
    params_added: int = 0

    def __str__(self) -> str:
        lines = [f"{len(self.modules)} adapted modules, {self.params_added:,} parameters added"]
        lines += [f"  {t}: {n}" for t, n in self.per_target.items()]
        return "\n".join(lines)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _suggest(target: str, names: Sequence[str]) -> list[str]:
    # Compare against every dotted suffix so "attn.qkvv" finds "attn.qkv" inside "blocks.0.attn.qkv".
    suffixes = sorted({".".join(n.split(".")[i:]) for n in names for i in range(len(n.split(".")))})
    return difflib.get_close_matches(target, suffixes, n=5, cutoff=0.5) or sorted(names)[:5]


def find_targets(
    model: nn.Module, targets: Sequence[str], *, include: Callable[[str], bool] | None = None
) -> dict[str, tuple[str, nn.Linear]]:
    """Maps each matched module name to (target, linear); raises naming close names for unmatched targets."""
    if not targets:
        raise ValueError("targets is empty: name at least one linear layer (e.g. ['attn.qkv', 'mlp.fc1'])")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    found: dict[str, tuple[str, nn.Linear]] = {}
    for target in targets:
        hits = [n for n in linears if _matches(n, target)]
        if not hits:
            raise ValueError(
                f"target {target!r} matches no nn.Linear in {type(model).__name__}; closest module names: "
                f"{_suggest(target, list(linears))}"
            )
        for n in hits:
            # a layer matched by two targets (BERT "output.dense" also ends "attention.output.dense") belongs
            # to the most specific one
            if (include is None or include(n)) and (n not in found or len(target) > len(found[n][0])):
                found[n] = (target, linears[n])
    return found


def inject_adapters(
    model: nn.Module,
    config: AdapterConfig,
    targets: Sequence[str],
    *,
    context_dim: int | None = None,
    out_splits: dict[str, int] | None = None,
    include: Callable[[str], bool] | None = None,
) -> InjectionReport:
    """Replaces every ``nn.Linear`` whose name ends with a target by the config's adapter layer, in place.

    Args:
        model: the module to adapt (its other parameters are not touched; call
            :func:`mark_only_adapters_trainable` to freeze them).
        config: the adapter config; its class selects the layer (:func:`cola.peft.methods.layer_for`).
        targets: name suffixes on a ``.`` boundary, e.g. ``["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]``.
        context_dim: width of the condition / context (CoLA: required; MokA: ``None`` = no cross term).
        out_splits: fused layers, e.g. ``{"attn.qkv": 3}`` (per-slice adapters).
        include: optional filter on the qualified name (e.g. to adapt only some blocks).

    Returns:
        An :class:`InjectionReport`.

    Raises:
        ValueError: a target matches no ``nn.Linear`` (the message lists the closest module names).
    """
    out_splits = out_splits or {}
    found = find_targets(model, targets, include=include)
    report = InjectionReport(per_target={t: 0 for t in targets})
    layer_class = layer_for(config)
    for name, (target, linear) in found.items():
        layer = layer_class.build(linear, config, context_dim=context_dim, out_splits=out_splits.get(target, 1))
        layer.adapter_name = name
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
        report.modules[name] = layer
        report.per_target[target] += 1
        report.params_added += sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("base_layer."))
    return report


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLinear]]:
    """Yields (name, layer) for every adapter layer in ``model``."""
    for n, m in model.named_modules():
        if isinstance(m, ADAPTER_LAYERS):
            yield n, m


def intra_groups(model: nn.Module) -> dict[IntraVariant, list[tuple[str, LowRankLinear]]]:
    """Every layer with an intra path, by its variant object (name, layer), in module order: what the model-level
    hooks of a variant (:meth:`IntraVariant.training_losses`, :meth:`~IntraVariant.after_optimizer_step`) get."""
    groups: dict[IntraVariant, list[tuple[str, LowRankLinear]]] = {}
    for n, m in adapter_layers(model):
        if isinstance(m, LowRankLinear):
            groups.setdefault(m.variant, []).append((n, m))
    return groups


def intra_training_losses(groups: dict[IntraVariant, list[tuple[str, LowRankLinear]]]) -> dict[str, torch.Tensor]:
    """The terms every intra variant adds to the training loss (AdaLoRA: ``orth_reg``), by name."""
    losses: dict[str, torch.Tensor] = {}
    for variant, layers in groups.items():
        losses.update(variant.training_losses([m for _, m in layers]))
    return losses


def intra_prepare(groups: dict[IntraVariant, list[tuple[str, LowRankLinear]]], total_steps: int) -> None:
    """Tells every intra variant the run's number of optimiser steps (raises when it is too short for one)."""
    for variant, layers in groups.items():
        variant.prepare([m for _, m in layers], total_steps)


def intra_after_optimizer_step(
    groups: dict[IntraVariant, list[tuple[str, LowRankLinear]]], step: int, total_steps: int
) -> None:
    """Runs every intra variant's hook after optimiser step ``step`` (0-based) of ``total_steps``."""
    for variant, layers in groups.items():
        variant.after_optimizer_step([m for _, m in layers], step, total_steps)


def intra_budget(groups: dict[IntraVariant, list[tuple[str, LowRankLinear]]]) -> dict[str, Any] | None:
    """The rank budget of the adaptive intra variant of a model (initial, target and current ranks and parameters,
    ranks per layer); ``None`` without one."""
    for variant, layers in groups.items():
        budget = variant.budget(layers)
        if budget is not None:
            return {"intra": variant.name, **budget}
    return None


def is_adapter_param(name: str) -> bool:
    """True for parameters that belong to an adapter (a name component carries an adapter prefix)."""
    return any(part.startswith(ADAPTER_PREFIXES) for part in name.split("."))


def is_up_projection(name: str) -> bool:
    """True for the B matrix of any method (``lora_B``, ``cola_B``, ``moka_B``: the last name component), the
    parameters LoRA+ trains at a higher learning rate."""
    return name.rpartition(".")[2] in UP_PROJECTIONS


def original_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """W0 of every layer with an intra path, as the pretrained model had it (by adapted module name): the base weight
    with a merge undone and, under PiSSA, the residual plus ``s B0 A0`` (:meth:`LowRankLinear.original_weight`)."""
    return {n: m.original_weight() for n, m in adapter_layers(model) if isinstance(m, LowRankLinear)}


def mark_only_adapters_trainable(model: nn.Module) -> int:
    """Freezes everything but adapter parameters; returns the number of trainable parameters.

    A CoLA layer with ``condition="random_frozen"`` keeps its hypernetwork frozen.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapter_layers(model):
        for n, p in layer.named_parameters():
            if not layer.frozen_parameter(n):
                p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _fold_all(model: nn.Module, merge: bool) -> int:
    layers = [layer for _, layer in adapter_layers(model) if layer.mergeable]
    for layer in layers:
        layer.merge() if merge else layer.unmerge()
    return len(layers)


def merge_adapters(model: nn.Module) -> int:
    """Folds every mergeable path (LoRA, CoLA's B_L A_L) into its base weight; returns the count."""
    return _fold_all(model, merge=True)


def unmerge_adapters(model: nn.Module) -> int:
    """Undoes :func:`merge_adapters`; returns the number of layers unmerged."""
    return _fold_all(model, merge=False)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Counts ``trainable``, ``total`` and ``adapter`` parameters (shared tensors counted once)."""
    seen: dict[int, tuple[str, object]] = {}
    for n, p in model.named_parameters(remove_duplicate=True):
        seen[id(p)] = (n, p)
    total = sum(p.numel() for _, p in seen.values())
    trainable = sum(p.numel() for _, p in seen.values() if p.requires_grad)
    adapter = sum(p.numel() for n, p in seen.values() if is_adapter_param(n))
    return {"trainable": trainable, "total": total, "adapter": adapter}


def adapter_params_per_layer(
    config: AdapterConfig,
    *,
    in_features: int,
    out_features: int,
    context_dim: int | None = None,
    out_splits: int = 1,
) -> int:
    """Trainable parameters one adapted layer adds, from its shapes alone (matches the built layer)."""
    return config.params_per_layer(
        in_features=in_features, out_features=out_features, context_dim=context_dim, out_splits=out_splits
    )
