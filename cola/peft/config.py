"""Validated configuration dataclasses for the adapters of :mod:`cola.peft`.

Every field name matches docs/method.md and the ``peft.*`` keys of ``configs/peft/*.yaml``; errors name the
field, the value and the accepted choices so a typo on the command line is fixed in one go. MokA's config lives
with its layer in :mod:`cola.peft.moka`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

from cola.dicts import check_choice

from .variants import INTRA_VARIANTS, IntraVariant, intra_variant

SHARING_CHOICES = ("none", "shared_a", "shared_b", "full")
CONDITION_CHOICES = ("pooled", "shuffled", "zero", "random_frozen")
PROPAGATION_CHOICES = ("uniform", "module_wise", "progressive")
POOLING_CHOICES = ("mean", "mean_with_padding", "cls")
HYPERNET_INIT_CHOICES = ("trunc_normal", "torch")
FUSION_CHOICES = ("concat", "mean", "per_stream")
INTRA_CHOICES = tuple(INTRA_VARIANTS)
"""``peft.intra``: how the intra (LoRA) path is scaled, initialised and applied (:data:`cola.peft.variants.INTRA_VARIANTS`)."""
STREAMS = ("vision", "text", "audio")
"""Stream names a per-stream setting (``reduction``, ``condition_pooling``) may be keyed by."""


def _check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name} must be {what}, got {value!r}")


def _check_dropout(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")


def _check_per_stream(name: str, value: Any, check: Callable[[str, Any], None]) -> None:
    """A setting that is one value or a mapping ``{stream: value}`` (docs/method.md#hypernetwork, #pooling), each
    value checked."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{name} is an empty mapping; give one value or {{stream: value}} for {list(STREAMS)}")
        for stream, v in value.items():
            if stream not in STREAMS:
                raise ValueError(f"{name} has unknown stream {stream!r}; streams are {list(STREAMS)}")
            check(f"{name}.{stream}", v)
    else:
        check(name, value)


def scaling_denominator(intra: str, rank: int) -> float:
    """The rank term of the intra scale ``s = alpha / denominator`` of variant ``intra``: ``sqrt(rank)`` for rsLoRA,
    ``rank`` for LoRA (:meth:`cola.peft.variants.IntraVariant.denominator`)."""
    return intra_variant(intra).denominator(rank)


def _check_sources(name: str, value: Any) -> None:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or any(v not in STREAMS for v in names):
        raise ValueError(f"{name} must be a non-empty list of streams from {list(STREAMS)}, got {value!r}")


def per_stream(name: str, value: Any, stream: str) -> Any:
    """The value of a per-stream setting for ``stream`` (a plain value applies to every stream)."""
    if not isinstance(value, Mapping):
        return value
    if stream not in value:
        raise ValueError(f"{name} has no entry for the {stream} stream (given: {dict(value)}); add {name}.{stream}")
    return value[stream]


@dataclass
class AdapterConfig:
    """Fields and checks every method shares: rank, alpha, dropout, the intra-path variant (and AdaLoRA's schedule,
    ``adalora``, read by that variant only) and the scale ``scaling = alpha / rank`` (rsLoRA: ``alpha / sqrt(rank)``).

    A method's config subclasses this (redeclaring a field only to change its default) and names itself in
    ``method``; :mod:`cola.peft.methods` registers it. ``from_dict`` rejects unknown keys by name.
    """

    method: ClassVar[str] = ""
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    intra: str = "lora"
    adalora: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_positive("rank", self.rank, integer=True)
        _check_positive("alpha", self.alpha)
        _check_dropout("dropout", self.dropout)
        check_choice("intra", self.intra, sorted(INTRA_CHOICES))
        if isinstance(self.adalora, Mapping):
            self.adalora = dict(self.adalora)  # a plain dict (Hydra hands a DictConfig over)
        self.variant.check(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AdapterConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown field(s) {unknown}; valid fields are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def variant(self) -> IntraVariant:
        """The intra variant object ``intra`` names (:data:`cola.peft.variants.INTRA_VARIANTS`)."""
        return INTRA_VARIANTS[self.intra]

    @property
    def scaling(self) -> float:
        """s = alpha / rank, the scale of every low-rank path (``intra=rslora``: alpha / sqrt(rank), rsLoRA); the
        one place the convention is computed (the variant gives the denominator)."""
        return self.alpha / self.variant.denominator(self.rank)

    def for_stream(self, stream: str) -> AdapterConfig:
        """This config with per-stream settings resolved for the layers of ``stream`` (none by default)."""
        return self

    def as_lora(self) -> LoRAConfig:
        """The plain LoRA at this rank, alpha, dropout and intra variant (what unpaired blocks of towers of unequal
        depth get)."""
        return LoRAConfig(
            rank=self.rank, alpha=float(self.alpha), dropout=float(self.dropout), intra=self.intra, adalora=self.adalora
        )

    def queries_other(self, *, anchor: bool) -> bool:
        """Whether layers of a stream take the other stream's state (``anchor``: the stream the other queries)."""
        return True

    def params_per_layer(self, *, in_features: int, out_features: int, context_dim: int | None, out_splits: int) -> int:
        """Trainable parameters one adapted layer adds, from its shapes alone (matches the built layer). LoRA and CoLA
        also take ``intra_rank``: count the intra path at that rank (an adaptive variant's final budget)."""
        raise NotImplementedError


@dataclass
class LoRAConfig(AdapterConfig):
    """LoRA: ``h = W0 x + b + (alpha / rank) B A drop(x)``.

    Attributes:
        rank: r, the inner dimension of A (r, d_in) and B (d_out, r).
        alpha: scaling numerator; the update is scaled by alpha / rank.
        dropout: dropout on the adapter input (0 disables it and skips the work).
        intra: ``lora`` | ``dora`` (weight-decomposed, + a magnitude of d_out) | ``rslora`` (alpha / sqrt(rank)) |
            ``pissa`` (A, B from W0's top-r SVD, the base replaced by the residual) | ``adalora`` (SVD form
            ``s P Λ Q`` with a rank budget, + Λ of S r; ``rank`` is the initial rank); docs/method.md#intra-path-variants.
        adalora: AdaLoRA's schedule (:class:`cola.peft.variants.AdaLoRAOptions`: target_rank, tinit, tfinal,
            delta_t, beta1, beta2, orth_reg_weight); ``None``: its defaults. Read under ``intra=adalora`` only.
        split_fused: give each output slice of a fused layer (timm ``attn.qkv``) its own A and B, as the
            official code's ``MergedLinear``; ``False`` treats the fused layer as one linear (HF peft).
    """

    method: ClassVar[str] = "lora"
    split_fused: bool = True

    def as_lora(self) -> LoRAConfig:
        return self

    def params_per_layer(
        self,
        *,
        in_features: int,
        out_features: int,
        context_dim: int | None = None,
        out_splits: int = 1,
        intra_rank: int | None = None,
    ) -> int:
        s = out_splits if self.split_fused else 1
        r = self.rank if intra_rank is None else intra_rank
        return self.variant.params(rank=r, in_features=in_features, out_features=out_features, out_splits=s)


@dataclass
class CoLAConfig(AdapterConfig):
    """CoLA (docs/method.md#cola-layer): ``h = W0 x + b + s B_L A_L drop(x) + lambda B_C Phi(c) A_C drop(x)``,
    ``s = alpha / rank``.

    Attributes:
        rank: r for both paths; Phi(c) is r x r.
        alpha: intra-path scaling numerator.
        dropout: input dropout, applied separately in each path (official).
        intra: the intra path's variant, ``lora`` | ``dora`` | ``rslora`` | ``pissa`` | ``adalora``
            (docs/method.md#intra-path-variants); the inter path adds outside it. ``pissa`` and ``adalora`` (B
            non-zero at init) cannot share B (``sharing=shared_b|full``).
        adalora: AdaLoRA's schedule (``intra=adalora``), as :class:`LoRAConfig`.
        reduction: hypernetwork hidden width is ``floor(d_c / reduction)``; an int, or a mapping keyed by the
            stream whose layers hold the hypernetworks (official AVS: ``{vision: 16, audio: 8}``).
        lambda_init: initial value of the learnable lambda; ``None`` means alpha / rank (official grounding), also
            under ``intra=rslora``: rsLoRA rescales the intra path only, so the inter path starts as in the paper.
        sharing: ``none`` | ``shared_a`` (A_C = A_L) | ``shared_b`` (B_C = B_L) | ``full`` (both).
        condition: ``pooled`` | ``shuffled`` (derangement of the batch) | ``zero`` | ``random_frozen``.
        propagation: which hidden state of the other stream conditions each sub-step (docs/method.md#propagation).
        condition_pooling: ``mean`` (real tokens, prefix tokens excluded) | ``mean_with_padding`` (official
            grounding: every position) | ``cls``; or a mapping keyed by the *source* stream the condition is pooled
            from (official AVS: ``{vision: mean, audio: cls}``).
        hypernet_dropout: dropout inside the hypernetwork (official: 0).
        hypernet_init: ``trunc_normal`` (official: Linear weights trunc_normal std 0.02, biases 0, as the host
            models re-initialise every nn.Linear) | ``torch`` (nn.Linear's own default init).
        condition_fusion: with more than two streams, how a layer's condition combines its source streams
            (docs/method.md#n-streams): ``concat`` (one hypernetwork on the concatenated pooled states), ``mean``
            (their average; equal widths) or ``per_stream`` (one hypernetwork per source, cores summed). With one
            source (two streams) all three are the same layer.
        condition_sources: ``{stream: [sources]}``: the streams whose states condition that stream's layers;
            ``None`` (or a stream left out): every other stream.
    """

    method: ClassVar[str] = "cola"
    reduction: int | dict[str, int] = 16
    lambda_init: float | None = None
    sharing: str = "none"
    condition: str = "pooled"
    propagation: str = "progressive"
    condition_pooling: str | dict[str, str] = "mean"
    hypernet_dropout: float = 0.0
    hypernet_init: str = "trunc_normal"
    condition_fusion: str = "concat"
    condition_sources: dict[str, list[str]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dropout("hypernet_dropout", self.hypernet_dropout)
        _check_per_stream("reduction", self.reduction, lambda n, v: _check_positive(n, v, integer=True))
        check_choice("hypernet_init", self.hypernet_init, sorted(HYPERNET_INIT_CHOICES))
        if self.lambda_init is not None and (
            isinstance(self.lambda_init, bool) or not isinstance(self.lambda_init, (int, float))
        ):
            raise ValueError(f"lambda_init must be a float or None (= alpha / rank), got {self.lambda_init!r}")
        check_choice("sharing", self.sharing, sorted(SHARING_CHOICES))
        check_choice("condition", self.condition, sorted(CONDITION_CHOICES))
        check_choice("propagation", self.propagation, sorted(PROPAGATION_CHOICES))
        check_choice("condition_fusion", self.condition_fusion, sorted(FUSION_CHOICES))
        if self.condition_sources is not None:
            _check_per_stream("condition_sources", self.condition_sources, _check_sources)
        _check_per_stream(
            "condition_pooling", self.condition_pooling, lambda n, v: check_choice(n, v, sorted(POOLING_CHOICES))
        )
        if self.variant.nonzero_b is not None and self.sharing in ("shared_b", "full"):
            raise ValueError(
                f"peft.intra={self.intra!r} cannot be combined with peft.sharing={self.sharing!r}: B_C would be "
                f"{self.variant.nonzero_b}, so the inter path would change the pretrained model at init; use sharing "
                "none or shared_a"
            )

    def for_stream(self, stream: str) -> CoLAConfig:
        """This config with ``reduction`` resolved for the layers of ``stream`` (the stream holding the hypernets)."""
        return replace(self, reduction=per_stream("reduction", self.reduction, stream))

    @property
    def lambda_value(self) -> float:
        """The initial lambda: ``lambda_init``, or alpha / rank when it is ``None`` (whatever ``intra`` is)."""
        return float(self.alpha / self.rank if self.lambda_init is None else self.lambda_init)

    def params_per_layer(
        self,
        *,
        in_features: int,
        out_features: int,
        context_dim: int | None = None,
        out_splits: int = 1,
        intra_rank: int | None = None,
    ) -> int:
        if isinstance(self.reduction, Mapping):
            raise ValueError(f"reduction={dict(self.reduction)} is per stream; pass config.for_stream(<stream>)")
        if context_dim is None:
            raise ValueError("CoLA needs context_dim (the other stream's hidden size)")
        s, r = out_splits, self.rank
        r_l = r if intra_rank is None else intra_rank  # the intra path's rank; the inter path keeps r
        n = self.variant.params(rank=r_l, in_features=in_features, out_features=out_features, out_splits=s)
        n += 0 if self.sharing in ("shared_a", "full") else s * r * in_features
        n += 0 if self.sharing in ("shared_b", "full") else out_features * r
        dims = context_dim if isinstance(context_dim, tuple) else (context_dim,)  # per_stream: one net per source
        hyper = 0
        for d_c in dims:
            h = d_c // self.reduction
            hyper += d_c * h + h + 2 * h + h * r * r + r * r + 2 * r * r
        n += s * (hyper + 1)  # hypernetwork and lambda per slice
        if self.condition == "random_frozen":
            n -= s * hyper
        return n
