"""The method library as one registry: every PEFT method the encoder can run, and the one parse of a ``peft`` node.

A :class:`Method` is everything the rest of the code asks about a method: its layer class (and through it its config
dataclass, what it exchanges across streams, whether it merges, its parameter prefixes and B matrices), whether the
towers train, which tensors its optimiser group and its checkpoints hold, its place and colour in reports. The
encoder, the task, the optimiser, the config checks and the reports ask the method instead of branching on its name.
Adding a method = its module (config and layer classes, e.g. :mod:`cola.peft.vera`), one row of :data:`METHODS`,
one ``configs/peft/<name>.yaml``, its tests and its docs paragraph (README "Adding a PEFT method").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from cola.dicts import check_choice

from .config import AdapterConfig, CoLAConfig, LoRAConfig
from .layers import AdapterLinear, CoLALinear, LoRALinear
from .moka import MoKALinear
from .vera import VeRALinear


@dataclass
class ParamMatchedConfig(CoLAConfig):
    """``lora_param_matched``: every field describes the CoLA run to match; ``split_fused`` is the matched LoRA's
    (per-slice A/B on fused layers, as :class:`LoRAConfig`)."""

    method: ClassVar[str] = "lora_param_matched"
    split_fused: bool = True


@dataclass(frozen=True)
class MatchedLoRA:
    """The LoRA config a ``lora_param_matched`` run uses and the two parameter counts it was matched on.

    Under an adaptive intra variant (AdaLoRA) the match is on the *final* budget (``params_cola`` and
    ``params_lora`` count the intra paths at their target ranks; ``basis`` says so) and the initial ranks are
    matched on the initial budget (``initial``: (CoLA, LoRA) counts at the initial ranks).
    """

    config: LoRAConfig
    params_cola: int
    params_lora: int
    basis: str = "trainable parameters"
    initial: tuple[int, int] | None = None

    def describe(self) -> str:
        """One line for the run's log: the derived rank(s) and the counts they were matched on."""
        cfg = self.config
        if self.initial is None:
            return f"param-matched LoRA rank {cfg.rank}: {self.params_lora:,} vs CoLA {self.params_cola:,}"
        return (
            f"param-matched LoRA ({cfg.intra}) initial rank {cfg.rank} -> target rank {cfg.variant.final_rank(cfg)}, "
            f"matched on the {self.basis}: {self.params_lora:,} vs CoLA {self.params_cola:,} "
            f"(initial budget: {self.initial[1]:,} vs CoLA {self.initial[0]:,})"
        )


@dataclass(frozen=True)
class Method:
    """One PEFT method: a name, the layer class it injects and what its layers cannot say themselves.

    What the layer class declares (:class:`cola.peft.AdapterLinear`: ``config_class``, ``exchange``, ``mergeable``,
    ``prefixes``, ``up_projections``) is read from it, never repeated here.

    Attributes:
        name: the ``peft.method`` value.
        layer: the adapter layer class injected into the towers (``None``: nothing is injected).
        parses_as: the dataclass the ``peft`` node's fields build when it is not ``layer.config_class``
            (``lora_param_matched`` describes a CoLA run and injects the LoRA it derives); ``None``: the layer's own.
        trains_towers: whether every tower parameter trains (full fine-tuning); else the towers are frozen.
        derive: a factory turning the parsed config and the planned layers into the config actually injected
            (``lora_param_matched``: the LoRA closest in parameters to the CoLA run it describes); ``None``: the
            parsed config is injected.
        color: its colour in comparison plots (:mod:`cola.compare`); its place in reports is its place in
            :data:`METHODS`.
    """

    name: str
    layer: type[AdapterLinear] | None = None
    parses_as: type[AdapterConfig] | None = None
    trains_towers: bool = False
    derive: Callable[..., MatchedLoRA] | None = None
    color: str = "#8c564b"

    @property
    def config(self) -> type[AdapterConfig] | None:
        """The dataclass the ``peft`` node's fields build (``None``: the method has no adapter config)."""
        return self.parses_as or (self.layer.config_class if self.layer is not None else None)

    @property
    def injects(self) -> bool:
        """Whether adapter layers are injected into the towers."""
        return self.layer is not None

    @property
    def exchange(self) -> str | None:
        """What its layers take from the other stream: ``"condition"`` (a pooled vector), ``"tokens"`` or ``None``."""
        return self.layer.exchange if self.layer is not None else None

    @property
    def frozen(self) -> bool:
        """Whether it is the frozen baseline: nothing injected and the towers do not train (only the heads do)."""
        return not self.injects and not self.trains_towers

    @property
    def gate(self) -> str | None:
        """The name of its layers' learned gate λ (the λ profile across depth, :mod:`cola.lambdas`); ``None``: its
        layers learn none."""
        return self.layer.gate if self.layer is not None else None

    @property
    def merges(self) -> bool:
        """Whether its layers fold (part of) the adapter into the base weight."""
        return self.layer is not None and self.layer.mergeable

    @property
    def up_projections(self) -> tuple[str, ...]:
        """Names of its B matrices (what LoRA+ trains faster); empty: LoRA+ does not apply."""
        return self.layer.up_projections if self.layer is not None else ()

    def in_adapter_group(self, name: str) -> bool:
        """Whether the trainable encoder tensor ``name`` trains at the adapters' learning rate: an adapter tensor, or
        any tower tensor when the towers train (the rest of the encoder, e.g. fusion layers, is a head's)."""
        from .inject import is_adapter_param

        return self.trains_towers or is_adapter_param(name)


def closest_rank(count: Callable[[int], int], target: int) -> tuple[int, int]:
    """The rank r >= 1 whose ``count(r)`` is closest to ``target`` (the smaller rank on a tie), and that count.

    ``count`` must grow with the rank (any shape: a variant's tensors need not be linear in r); it is searched by
    doubling, then bisection, so a count is asked O(log r) times.
    """
    counts: dict[int, int] = {}

    def at(r: int) -> int:
        if r not in counts:
            counts[r] = count(r)
        return counts[r]

    hi = 1
    while at(hi) < target:
        hi *= 2
    lo = hi // 2 + 1 if hi > 1 else 1  # at(hi // 2) < target: the first rank reaching it is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if at(mid) < target else (lo, mid)
    rank = min((lo - 1, lo) if lo > 1 else (lo,), key=lambda r: abs(at(r) - target))
    return rank, at(rank)


def param_matched_lora_rank(
    cola_params: int, layer_shapes: Sequence[tuple[int, int, int]], *, split_fused: bool = True, intra: str = "lora"
) -> tuple[int, int]:
    """The LoRA rank whose trainable parameters are closest to ``cola_params`` on the same layers.

    Args:
        cola_params: the CoLA run's adapter parameters (e.g. ``InjectionReport.params_added`` summed).
        layer_shapes: (in_features, out_features, out_splits) of every adapted layer.
        split_fused: whether LoRA gives fused layers per-slice A (as :class:`LoRALinear` does by default).
        intra: the matched LoRA's intra variant (its tensors are counted as the variant counts them,
            :meth:`cola.peft.variants.IntraVariant.params`; DoRA adds a rank-independent magnitude of d_out per layer).

    Returns:
        (rank, lora_params) — the rank and the LoRA parameter count it gives.
    """
    if not layer_shapes:
        raise ValueError("layer_shapes is empty: no adapted layer to match")

    def lora_params(rank: int) -> int:
        cfg = LoRAConfig(rank=rank, alpha=rank, split_fused=split_fused, intra=intra)
        return sum(cfg.params_per_layer(in_features=i, out_features=o, out_splits=s) for i, o, s in layer_shapes)

    return closest_rank(lora_params, cola_params)


def match_lora(
    cola: ParamMatchedConfig, planned: Sequence[tuple[AdapterConfig, int, int, int | None, int]]
) -> MatchedLoRA:
    """The LoRA config of ``lora_param_matched`` (docs/method.md#lora-param-matched): the rank whose parameters are
    closest to the CoLA run on the same layers, with the CoLA run's intra variant and the same intra-path scale
    (alpha = ``cola.scaling * rank``; rsLoRA: ``cola.scaling * sqrt(rank)``).

    Under an adaptive intra variant (AdaLoRA: the intra rank shrinks to a target while training) the target rank
    is matched on the final budget — the CoLA run's parameters with its intra paths at their target rank (its
    inter paths keep theirs) — and the initial rank on the initial budget, each the closest; the result says so.

    Args:
        cola: the CoLA run to match.
        planned: one (config, in_features, out_features, context_dim, out_splits) per layer the CoLA run would
            adapt, with the config that layer would get (CoLA resolved per stream, or the plain LoRA of an
            unpaired block); the matched LoRA adapts the same layers.
    """

    def cola_params(final: bool) -> int:
        return sum(
            cfg.params_per_layer(
                in_features=i,
                out_features=o,
                context_dim=c,
                out_splits=s,
                **({"intra_rank": cfg.variant.final_rank(cfg)} if final else {}),
            )
            for cfg, i, o, c, s in planned
        )

    variant = cola.variant
    params_cola = cola_params(final=False)
    shapes = [(i, o, s) for _, i, o, _, s in planned]
    rank, params_lora = param_matched_lora_rank(params_cola, shapes, split_fused=cola.split_fused, intra=cola.intra)
    alpha = cola.scaling * variant.denominator(rank)
    common = dict(dropout=cola.dropout, split_fused=cola.split_fused, intra=cola.intra)
    if not variant.adaptive:
        lora = LoRAConfig(rank=rank, alpha=alpha, adalora=cola.adalora, **common)
        return MatchedLoRA(lora, params_cola, params_lora)
    final_cola = cola_params(final=True)
    # the LoRA's final budget is its intra path at the target rank: the count of a LoRA of that rank
    target, final_lora = param_matched_lora_rank(final_cola, shapes, split_fused=cola.split_fused, intra=cola.intra)
    if target > rank:  # a count nearer a rank above the initial one: keep the initial rank (nothing to prune)
        target, final_lora = rank, params_lora
    lora = LoRAConfig(rank=rank, alpha=alpha, adalora=variant.with_ranks(cola.adalora, target_rank=target), **common)
    return MatchedLoRA(lora, final_cola, final_lora, basis="final budget", initial=(params_cola, params_lora))


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("frozen", color="#7f7f7f"),
        Method("lora", LoRALinear, color="#1f77b4"),
        Method("lora_param_matched", LoRALinear, parses_as=ParamMatchedConfig, derive=match_lora, color="#17becf"),
        Method("moka", MoKALinear, color="#9467bd"),
        Method("vera", VeRALinear, color="#2ca02c"),
        Method("cola", CoLALinear, color="#d62728"),
        Method("full", trains_towers=True, color="#2b2b2b"),
    )
}
"""Every method ``peft.method`` may name, in the order reports list them (frozen towers, the baselines, CoLA, full
fine-tuning); ``configs/peft/<name>.yaml`` holds each one's node (a test checks the folder is this table)."""

PAPER_COMPARISON: tuple[str, str] = ("cola", "lora")
"""The paper's comparison, (its method, the reference): CoLA against LoRA. Comparison reports divide by the
reference (Δ vs LoRA, ``cola/lora`` ratios) and the reproduction card composes both."""
PAPER_METHOD, REFERENCE_METHOD = PAPER_COMPARISON
GATED_METHODS: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.gate is not None)
"""The methods whose layers learn a gate λ (:attr:`Method.gate`): the runs with a λ profile across depth."""

ADAPTER_LAYERS: tuple[type[AdapterLinear], ...] = tuple(dict.fromkeys(m.layer for m in METHODS.values() if m.layer))
ADAPTER_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(p for cls in ADAPTER_LAYERS for p in cls.prefixes))
UP_PROJECTIONS: tuple[str, ...] = tuple(dict.fromkeys(p for cls in ADAPTER_LAYERS for p in cls.up_projections))
"""Parameter names of every method's B matrices (``lora_B``, ``cola_B``, ``moka_B``): LoRA+'s faster group."""
PLACEMENT_KEYS = ("layers", "layer_map")
"""Keys of the ``peft`` node that say where adapters go, read by the encoder, not by a method's config."""
CONFIG_KEYS = frozenset(f.name for m in METHODS.values() if m.config for f in fields(m.config))
"""Fields of every method's config: a ``peft`` node may carry any of them (so one sweep composes over every
method); the method's own config takes its fields."""


def get_method(name: Any) -> Method:
    """The registered method ``name``; raises ``ValueError`` naming the choices."""
    check_choice("peft.method", name, METHODS)
    return METHODS[name]


def layer_for(config: AdapterConfig) -> type[AdapterLinear]:
    """The adapter layer class built from ``config`` (by its type)."""
    for cls in ADAPTER_LAYERS:
        if type(config) is cls.config_class:
            return cls
    raise TypeError(
        f"no adapter layer is built from {type(config).__name__}; layers: "
        f"{[f'{c.__name__}({c.config_class.__name__})' for c in ADAPTER_LAYERS]}"
    )


@dataclass(frozen=True)
class PeftSpec:
    """A parsed ``peft`` node (what ``hydra.utils.instantiate(cfg.peft)`` returns): the method, its config (``None``
    for ``frozen``/``full``), the placement keys, and the node itself (:meth:`to_dict`), which checkpoints and
    adapter files store and compare."""

    method: Method
    config: AdapterConfig | None
    layers: list[int] | None = None
    layer_map: Any = None
    node: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def name(self) -> str:
        return self.method.name

    def to_dict(self) -> dict[str, Any]:
        """The node as it was parsed (``method`` and every key given, ``_target_`` left out), as plain values."""
        return copy.deepcopy(self.node)


def build_peft(method: Any = "frozen", **fields_: Any) -> PeftSpec:
    """Parses a ``peft`` node (``configs/peft/*.yaml``, their ``_target_``): the one parse the harness makes and
    hands to the config checks, the encoder, the task and its checkpoints.

    Args:
        method: a name of :data:`METHODS`.
        **fields_: config fields; any field of a registered method's config is accepted, the method's own
            config takes its fields; and the placement keys ``layers`` (block-pair indices to adapt, ``None``: all)
            and ``layer_map`` (pairing of towers of unequal depth, :func:`cola.models.resolve_layer_pairs`).

    Raises:
        ValueError: unknown method or key, or a field value the method's config rejects (naming it).
    """
    m = get_method(method)
    fields_.pop("_target_", None)
    node = {"method": method, **copy.deepcopy(fields_)}
    layers, layer_map = fields_.pop("layers", None), fields_.pop("layer_map", None)
    unknown = sorted(set(fields_) - CONFIG_KEYS)
    if unknown:
        raise ValueError(
            f"peft has unknown key(s) {unknown}; valid keys are {sorted(CONFIG_KEYS | {'method', *PLACEMENT_KEYS})}"
        )
    config = None
    if m.config is not None:
        own = {f.name for f in fields(m.config)}
        config = m.config.from_dict({k: v for k, v in fields_.items() if k in own})
    return PeftSpec(m, config, None if layers is None else list(layers), layer_map, node)


def config_from_dict(values: dict[str, Any]) -> AdapterConfig:
    """The adapter config named by ``values["method"]`` from the other keys (strict: unknown keys raise)."""
    values = dict(values)
    m = get_method(values.pop("method", None))
    if m.config is None:
        raise ValueError(f"peft.method={m.name!r} has no adapter config")
    return m.config.from_dict(values)
