"""Injection of adapter layers by module name, trainability, merging and parameter counting."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from .config import CoLAConfig, LoRAConfig, MoKAConfig
from .layers import ADAPTER_LAYERS, ADAPTER_PREFIXES, AdapterLinear, CoLALinear, LoRALinear, MoKALinear


def config_from_dict(values: dict) -> LoRAConfig | CoLAConfig | MoKAConfig:
    """Builds the config named by ``values["method"]`` (lora | cola | moka) from the other keys."""
    values = dict(values)
    method = values.pop("method", None)
    classes = {"lora": LoRAConfig, "cola": CoLAConfig, "moka": MoKAConfig}
    if method not in classes:
        raise ValueError(f"peft.method must be one of {sorted(classes)}, got {method!r}")
    return classes[method].from_dict(values)


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


def _make_layer(
    linear: nn.Linear, config: LoRAConfig | CoLAConfig | MoKAConfig, *, context_dim: int | None, splits: int
) -> AdapterLinear:
    if isinstance(config, CoLAConfig):
        if context_dim is None:
            raise ValueError("CoLA needs context_dim (the other stream's hidden size)")
        return CoLALinear(linear, config, context_dim=context_dim, out_splits=splits)
    if isinstance(config, LoRAConfig):
        return LoRALinear(linear, config, out_splits=splits)
    if isinstance(config, MoKAConfig):
        return MoKALinear(linear, config, context_dim=context_dim)
    raise TypeError(f"config must be LoRAConfig, CoLAConfig or MoKAConfig, got {type(config).__name__}")


def inject_adapters(
    model: nn.Module,
    config: LoRAConfig | CoLAConfig | MoKAConfig,
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
        config: the adapter config; its class selects the layer (LoRA / CoLA / MokA).
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
    for name, (target, linear) in found.items():
        layer = _make_layer(linear, config, context_dim=context_dim, splits=out_splits.get(target, 1))
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


def is_adapter_param(name: str) -> bool:
    """True for parameters that belong to an adapter (a name component carries an adapter prefix)."""
    return any(part.startswith(ADAPTER_PREFIXES) for part in name.split("."))


def mark_only_adapters_trainable(model: nn.Module) -> int:
    """Freezes everything but adapter parameters; returns the number of trainable parameters.

    A CoLA layer with ``condition="random_frozen"`` keeps its hypernetwork frozen.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for _, layer in adapter_layers(model):
        frozen_hyper = isinstance(layer, CoLALinear) and layer.config.condition == "random_frozen"
        for n, p in layer.named_parameters():
            if n.startswith("base_layer.") or (frozen_hyper and n.startswith("cola_hypernet.")):
                continue
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_adapters(model: nn.Module) -> int:
    """Folds every mergeable intra path (LoRA, CoLA's B_L A_L) into its base weight; returns the count."""
    n = 0
    for _, layer in adapter_layers(model):
        if isinstance(layer, (LoRALinear, CoLALinear)):
            layer.merge()
            n += 1
    return n


def unmerge_adapters(model: nn.Module) -> int:
    """Undoes :func:`merge_adapters`; returns the number of layers unmerged."""
    n = 0
    for _, layer in adapter_layers(model):
        if isinstance(layer, (LoRALinear, CoLALinear)):
            layer.unmerge()
            n += 1
    return n


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
    config: LoRAConfig | CoLAConfig | MoKAConfig,
    *,
    in_features: int,
    out_features: int,
    context_dim: int | None = None,
    out_splits: int = 1,
) -> int:
    """Trainable parameters one adapted layer adds, from its shapes alone (matches the built layer)."""
    r = config.rank
    if isinstance(config, LoRAConfig):
        s = out_splits if config.split_fused else 1
        return s * r * in_features + out_features * r
    if isinstance(config, MoKAConfig):
        return r * (in_features + out_features + (context_dim or 0))
    if isinstance(config, CoLAConfig):
        if isinstance(config.reduction, Mapping):
            raise ValueError(f"reduction={dict(config.reduction)} is per stream; pass config.for_stream(<stream>)")
        s = out_splits
        n = s * r * in_features + out_features * r  # A_L, B_L
        n += 0 if config.sharing in ("shared_a", "full") else s * r * in_features
        n += 0 if config.sharing in ("shared_b", "full") else out_features * r
        h = context_dim // config.reduction
        hyper = context_dim * h + h + 2 * h + h * r * r + r * r + 2 * r * r
        n += s * (hyper + 1)  # hypernetwork and lambda per slice
        if config.condition == "random_frozen":
            n -= s * hyper
        return n
    raise TypeError(f"unknown config type {type(config).__name__}")


def param_matched_lora_rank(
    cola_params: int, layer_shapes: Sequence[tuple[int, int, int]], *, split_fused: bool = True
) -> tuple[int, int]:
    """The LoRA rank whose trainable parameters are closest to ``cola_params`` on the same layers.

    Args:
        cola_params: the CoLA run's adapter parameters (e.g. ``InjectionReport.params_added`` summed).
        layer_shapes: (in_features, out_features, out_splits) of every adapted layer.
        split_fused: whether LoRA gives fused layers per-slice A (as :class:`LoRALinear` does by default).

    Returns:
        (rank, lora_params) — the rank and the LoRA parameter count it gives.
    """
    if not layer_shapes:
        raise ValueError("layer_shapes is empty: no adapted layer to match")

    def lora_params(rank: int) -> int:
        cfg = LoRAConfig(rank=rank, alpha=rank, split_fused=split_fused)
        return sum(
            adapter_params_per_layer(cfg, in_features=i, out_features=o, out_splits=s) for i, o, s in layer_shapes
        )

    per_rank = lora_params(1)  # the count is linear in the rank
    lo = max(1, cola_params // per_rank)
    rank = min((lo, lo + 1), key=lambda r: abs(lora_params(r) - cola_params))
    return rank, lora_params(rank)
