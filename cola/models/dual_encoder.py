"""Dual encoder: two frozen towers run block by block in lockstep, exchanging conditions (docs/method.md#dual-encoder).

For each pair of blocks (block i of stream a, block j of stream b; see ``layer_map``) the encoder runs the
three stages of :mod:`cola.models.block_steps` on both streams in turn and, before each stage, hands every
adapted layer of stream m what it needs from the other stream m′ at that point:

| ``propagation``            | qkv gets  | out-proj gets | fc1, fc2 get   |
|----------------------------|-----------|---------------|----------------|
| ``uniform``                | pool(x′)  | pool(x′)      | pool(x′)       |
| ``module_wise``            | pool(x′)  | pool(x′)      | pool(x′_attn)  |
| ``progressive`` (official) | pool(x′)  | pool(ctx′)    | pool(x′_attn)  |

x′ = the other stream's block input, ctx′ = its attention context just before its out-projection, x′_attn =
its post-attention residual stream. CoLA layers receive the pooled vector through ``set_condition`` (not
detached: gradients cross streams); MokA layers receive the unpooled tokens and their key mask through
``set_context``; LoRA, ``frozen`` and ``full`` exchange nothing. A pair's conditions are cleared as soon as
the pair has run (autograd keeps what backward needs), and everything in ``finally``.

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
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from cola.peft import (
    CoLAConfig,
    CoLALinear,
    InjectionReport,
    LoRAConfig,
    MoKAConfig,
    MoKALinear,
    adapter_params_per_layer,
    find_targets,
    inject_adapters,
    mark_only_adapters_trainable,
    param_matched_lora_rank,
)
from cola.peft.config import per_stream

from .block_steps import STAGES, Tower

log = logging.getLogger(__name__)

METHODS = ("cola", "lora", "lora_param_matched", "moka", "frozen", "full")
ENCODER_KEYS = frozenset({"method", "layers", "layer_map"})
_CONFIG_KEYS = frozenset(f.name for cls in (CoLAConfig, LoRAConfig, MoKAConfig) for f in fields(cls))
ANCHORS = ("a", "b", None, "auto")


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


# ----------------------------------------------------------------------------------------------- outputs
@dataclass
class DualEncoderOutput:
    """Both streams after their final norm, with masks and optional intermediate block outputs.

    Attributes:
        tokens_a: (B, Na, Ca) stream a's tokens after the final norm.
        mask_a: (B, Na) bool, True = real token.
        tokens_b: (B, Nb, Cb).
        mask_b: (B, Nb).
        layers_a: outputs of the requested blocks of stream a (before the final norm), or ``None``.
        layers_b: same for stream b.
        num_prefix_a: leading special tokens of stream a (ViT: cls + registers, BERT: 1, AST: 2).
        num_prefix_b: same for stream b.
    """

    tokens_a: torch.Tensor
    mask_a: torch.Tensor
    tokens_b: torch.Tensor
    mask_b: torch.Tensor
    layers_a: list[torch.Tensor] | None
    layers_b: list[torch.Tensor] | None
    num_prefix_a: int
    num_prefix_b: int


@dataclass
class DualEncoderReport:
    """What the encoder adapted: one :class:`InjectionReport` per tower (``None`` for frozen / full).

    For ``lora_param_matched``, ``lora_rank`` is the derived rank, ``params_cola`` the CoLA count it matches
    and ``params_lora`` the LoRA count it gives (both logged; never hand-set).
    """

    method: str
    a: InjectionReport | None = None
    b: InjectionReport | None = None
    lora_rank: int | None = None
    params_cola: int | None = None
    params_lora: int | None = None

    @property
    def params_added(self) -> int:
        return sum(r.params_added for r in (self.a, self.b) if r is not None)

    def __str__(self) -> str:
        lines = [f"peft method {self.method}: {self.params_added:,} adapter parameters"]
        for name, r in (("a", self.a), ("b", self.b)):
            if r is not None:
                lines.append(f"tower {name}: {r}")
        if self.lora_rank is not None:
            lines.append(f"param-matched LoRA rank {self.lora_rank}: {self.params_lora:,} vs CoLA {self.params_cola:,}")
        return "\n".join(lines)


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


def _schedule(pairs: list[tuple[int, int]], depth_a: int, depth_b: int) -> list[tuple[str, int, int, int]]:
    """Execution order: (kind, i_a, i_b, pair index) with kind "a" / "b" (a lone block) or "pair"."""
    steps: list[tuple[str, int, int, int]] = []
    next_a = next_b = 0
    for k, (i, j) in enumerate(pairs):
        steps += [("a", t, -1, -1) for t in range(next_a, i)] + [("b", -1, t, -1) for t in range(next_b, j)]
        steps.append(("pair", i, j, k))
        next_a, next_b = i + 1, j + 1
    steps += [("a", t, -1, -1) for t in range(next_a, depth_a)] + [("b", -1, t, -1) for t in range(next_b, depth_b)]
    return steps


def _resolve_indices(indices: Any, n: int, what: str) -> list[int]:
    out = []
    for v in indices:
        if isinstance(v, bool) or not isinstance(v, int) or not -n <= v < n:
            raise ValueError(f"{what} entries must be integers in [{-n}, {n}), got {v!r}")
        out.append(v % n)
    return out


# ----------------------------------------------------------------------------------------------- encoder
class DualEncoder(nn.Module):
    """Two towers in lockstep with cross-modal adapters injected by :mod:`cola.peft`.

    Args:
        tower_a: first stream (vision in every task).
        tower_b: second stream (text or audio).
        peft: the ``peft`` config node as a plain dict: ``method`` in ``cola lora lora_param_matched moka
            frozen full`` plus that method's fields (``configs/peft/<method>.yaml``); ``None`` = frozen.
            ``layers`` / ``layer_map`` may sit here too (the arguments below win when not ``None``).
        targets_a: adapted linear layers of tower a, as name suffixes (e.g. ``["attn.qkv", "attn.proj",
            "mlp.fc1", "mlp.fc2"]``).
        targets_b: same for tower b.
        out_splits_a: fused layers of tower a, e.g. ``{"attn.qkv": 3}``.
        out_splits_b: same for tower b.
        layers: indices of the block pairs to adapt (``None`` = all); with equal depths and no
            ``layer_map`` a pair index is the block index. Other blocks run unadapted.
        layer_map: ``None``, ``every_other`` or a list of ``[i_a, i_b]`` (see :func:`resolve_layer_pairs`).
        anchor: MokA only, which stream is the anchor that the other queries: ``"b"`` (vision-language: text
            is the anchor, vision layers query text; text layers are LoRA-shaped unless ``bidirectional``),
            ``"a"``, ``None`` (both streams query each other: audio-visual), or ``"auto"`` (the text tower
            if exactly one tower is text, else ``None``).
        gradient_checkpointing: recompute each lockstep step in backward instead of keeping its activations
            (training only; same results, less memory, about one extra forward of compute).

    Attributes:
        report: a :class:`DualEncoderReport`.
        layer_pairs: the (i_a, i_b) block pairs; ``adapted_pairs`` the pair indices that carry adapters.
        hidden_size_a, hidden_size_b, num_prefix_a, num_prefix_b: tower properties.

    Raises:
        ValueError: unknown method or key, depth mismatch without ``layer_map``, bad ``layers`` / ``anchor``.
    """

    def __init__(
        self,
        tower_a: Tower,
        tower_b: Tower,
        *,
        peft: dict[str, Any] | None = None,
        targets_a: Sequence[str] = (),
        targets_b: Sequence[str] = (),
        out_splits_a: dict[str, int] | None = None,
        out_splits_b: dict[str, int] | None = None,
        layers: Sequence[int] | None = None,
        layer_map: Any = None,
        anchor: str | None = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = bool(gradient_checkpointing)
        self._rows_per_sample = 1
        if not isinstance(tower_a, Tower) or not isinstance(tower_b, Tower):
            raise TypeError(f"towers must be cola.models.Tower, got {type(tower_a).__name__}, {type(tower_b).__name__}")
        self.tower_a, self.tower_b = tower_a, tower_b
        self.hidden_size_a, self.hidden_size_b = tower_a.hidden_size, tower_b.hidden_size
        self.num_prefix_a, self.num_prefix_b = tower_a.num_prefix_tokens, tower_b.num_prefix_tokens

        peft = dict(peft) if peft is not None else {"method": "frozen"}
        method = peft.pop("method", None)
        if method not in METHODS:
            raise ValueError(f"peft.method must be one of {list(METHODS)}, got {method!r}")
        self.method = method
        peft_layers, peft_layer_map = peft.pop("layers", None), peft.pop("layer_map", None)
        layers = peft_layers if layers is None else layers
        layer_map = peft_layer_map if layer_map is None else layer_map
        unknown = sorted(set(peft) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(f"peft has unknown key(s) {unknown}; valid keys are {sorted(_CONFIG_KEYS | ENCODER_KEYS)}")

        depth_a, depth_b = tower_a.depth, tower_b.depth
        self.layer_pairs = resolve_layer_pairs(layer_map, depth_a, depth_b)
        all_pairs = list(range(len(self.layer_pairs)))
        self.adapted_pairs = (
            all_pairs if layers is None else sorted(set(_resolve_indices(layers, len(all_pairs), "peft.layers")))
        )
        self._schedule = _schedule(self.layer_pairs, depth_a, depth_b)

        # ---- layer configs
        cola_cfg = moka_cfg = None
        self.peft_config: CoLAConfig | LoRAConfig | MoKAConfig | None = None
        if method in ("cola", "lora_param_matched"):
            cola_cfg = CoLAConfig.from_dict(_fields_of(CoLAConfig, peft))
            self.peft_config = cola_cfg
        elif method == "lora":
            self.peft_config = LoRAConfig.from_dict(_fields_of(LoRAConfig, peft))
        elif method == "moka":
            moka_cfg = MoKAConfig.from_dict(_fields_of(MoKAConfig, peft))
            self.peft_config = moka_cfg
        self.propagation = getattr(self.peft_config, "propagation", "progressive")
        self.stream_a, self.stream_b = tower_a.modality, tower_b.modality
        pooling = getattr(self.peft_config, "condition_pooling", "mean")
        self.condition_pooling = pooling
        # keyed by the *source* stream: pooling_a pools stream a's tokens into the condition of b's layers
        self.pooling_a = per_stream("condition_pooling", pooling, self.stream_a)
        self.pooling_b = per_stream("condition_pooling", pooling, self.stream_b)
        self._exchange = {"cola": "cola", "moka": "moka"}.get(method)  # who receives cross-stream inputs

        # ---- which stream queries which (MokA); CoLA conditions both streams
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {list(ANCHORS)}, got {anchor!r}")
        if anchor == "auto":
            text = [s for s, t in (("a", tower_a), ("b", tower_b)) if t.has_padding]
            anchor = text[0] if len(text) == 1 else None
        self.anchor = anchor
        bidirectional = bool(moka_cfg.bidirectional) if moka_cfg is not None else False
        ctx_a: int | None = tower_b.hidden_size
        ctx_b: int | None = tower_a.hidden_size
        if method == "moka":
            ctx_a = tower_b.hidden_size if (anchor != "a" or bidirectional) else None
            ctx_b = tower_a.hidden_size if (anchor != "b" or bidirectional) else None
        if self._exchange and self.propagation == "progressive":
            for name, t in (("a", tower_a), ("b", tower_b)):
                if t.context_size != t.hidden_size:
                    raise ValueError(
                        f"propagation=progressive hands over tower {name}'s attention context (width "
                        f"{t.context_size}) but conditions are sized to its hidden width {t.hidden_size}"
                    )

        # ---- injection and trainability
        # Blocks of an adapted pair get the method's layer; with a layer_map that leaves blocks of the deeper
        # tower unpaired (every_other), those get plain LoRA at the same rank, alpha and dropout, as the official
        # code (for method=lora every block is LoRA). An explicit peft.layers adapts only the chosen pairs.
        names_a, names_b = tower_a.block_names(), tower_b.block_names()
        paired_a = [self.layer_pairs[k][0] for k in self.adapted_pairs]
        paired_b = [self.layer_pairs[k][1] for k in self.adapted_pairs]
        lone_a = lone_b = []
        if layers is None:
            lone_a = sorted(set(range(depth_a)) - {i for i, _ in self.layer_pairs})
            lone_b = sorted(set(range(depth_b)) - {j for _, j in self.layer_pairs})
        self.unpaired_blocks = {"a": lone_a, "b": lone_b}

        def spec(tower, stream, targets, splits, blocks, names, ctx):
            return _Spec(tower, stream, list(targets), dict(splits or {}), _block_filter(names, blocks), ctx)

        specs = (
            spec(tower_a, self.stream_a, targets_a, out_splits_a, paired_a, names_a, ctx_a),
            spec(tower_b, self.stream_b, targets_b, out_splits_b, paired_b, names_b, ctx_b),
        )
        lone_specs = (
            spec(tower_a, self.stream_a, targets_a, out_splits_a, lone_a, names_a, None),
            spec(tower_b, self.stream_b, targets_b, out_splits_b, lone_b, names_b, None),
        )
        self.report = DualEncoderReport(method=method)
        if method in ("frozen", "full"):
            for tower in (tower_a, tower_b):
                tower.requires_grad_(method == "full")
        else:
            rank, alpha = int(peft.get("rank", 8)), float(peft.get("alpha", 8.0))
            lone_cfg = LoRAConfig(rank=rank, alpha=alpha, dropout=float(peft.get("dropout", 0.0)))
            config = self.peft_config
            if method == "lora_param_matched":
                config = self._param_matched_lora(
                    cola_cfg, specs, lone_specs, lone_cfg, split_fused=bool(peft.get("split_fused", True))
                )
                lone_cfg = config
            elif method == "lora":
                lone_cfg = config
            reports = []
            for main, lone in zip(specs, lone_specs, strict=True):
                cfg_main = config.for_stream(main.stream) if isinstance(config, CoLAConfig) else config
                report = InjectionReport(per_target={t: 0 for t in main.targets})
                if main.include is not None:
                    report = inject_adapters(
                        main.tower.model,
                        cfg_main,
                        main.targets,
                        context_dim=main.ctx,
                        out_splits=main.splits,
                        include=main.include,
                    )
                if lone.include is not None:
                    extra = inject_adapters(
                        lone.tower.model, lone_cfg, lone.targets, out_splits=lone.splits, include=lone.include
                    )
                    report.modules.update(extra.modules)
                    for t, n in extra.per_target.items():
                        report.per_target[t] = report.per_target.get(t, 0) + n
                    report.params_added += extra.params_added
                mark_only_adapters_trainable(main.tower.model)
                reports.append(report)
            self.report.a, self.report.b = reports
        log.info("%s", self.report)

        # ---- adapter layers of each adapted pair, by stage, that receive the other stream's states
        self._groups_a: dict[int, dict[str, list[nn.Module]]] = {}
        self._groups_b: dict[int, dict[str, list[nn.Module]]] = {}
        self._exchange_layers: list[nn.Module] = []
        if self._exchange:
            for k in self.adapted_pairs:
                i, j = self.layer_pairs[k]
                self._groups_a[k] = self._stage_groups(tower_a, i)
                self._groups_b[k] = self._stage_groups(tower_b, j)
            self._exchange_layers = [
                m for g in (*self._groups_a.values(), *self._groups_b.values()) for ms in g.values() for m in ms
            ]

    # ------------------------------------------------------------------------------------------ building
    def _param_matched_lora(self, cola_cfg: CoLAConfig, specs, lone_specs, lone_cfg: LoRAConfig, *, split_fused: bool):
        """LoRA whose rank gives the parameter count closest to the CoLA run on the same layers
        (docs/method.md#lora-param-matched).

        The CoLA run's count includes the plain LoRA adapters of unpaired blocks; the matched LoRA adapts every
        layer the CoLA run adapts.
        """
        shapes: list[tuple[int, int, int]] = []
        cola_params = 0
        for group, cfg_of in ((specs, lambda sp: cola_cfg.for_stream(sp.stream)), (lone_specs, lambda sp: lone_cfg)):
            for sp in group:
                if sp.include is None:
                    continue
                cfg = cfg_of(sp)
                for _, (target, linear) in find_targets(sp.tower.model, sp.targets, include=sp.include).items():
                    s = sp.splits.get(target, 1)
                    shapes.append((linear.in_features, linear.out_features, s))
                    cola_params += adapter_params_per_layer(
                        cfg,
                        in_features=linear.in_features,
                        out_features=linear.out_features,
                        context_dim=sp.ctx,
                        out_splits=s,
                    )
        rank, lora_params = param_matched_lora_rank(cola_params, shapes, split_fused=split_fused)
        self.report.lora_rank, self.report.params_cola, self.report.params_lora = rank, cola_params, lora_params
        # Same intra-path scale alpha / r as the CoLA run (rank=R keeps alpha / r fixed too).
        return LoRAConfig(rank=rank, alpha=cola_cfg.scaling * rank, dropout=cola_cfg.dropout, split_fused=split_fused)

    def _stage_groups(self, tower: Tower, block_index: int) -> dict[str, list[nn.Module]]:
        groups: dict[str, list[nn.Module]] = {s: [] for s in STAGES}
        for rel, m in tower.blocks[block_index].named_modules():
            if isinstance(m, CoLALinear) or (isinstance(m, MoKALinear) and m.context_dim is not None):
                groups[tower.stage_of(rel)].append(m)
        return groups

    # ------------------------------------------------------------------------------------------ forward
    def _hand(self, layers: list[nn.Module], h_other: torch.Tensor, w_other, km_other, pooled=None):
        """Gives one stage's layers the other stream's state; returns the pooled condition (CoLA) for reuse."""
        if self._exchange == "cola":
            c = pool_tokens(h_other, w_other) if pooled is None else pooled  # (B, C_other)
            for m in layers:
                m.set_condition(c, group=self._rows_per_sample)
            return c
        for m in layers:  # MokA: unpooled tokens (B, M, C_other) and their key mask
            m.set_context(h_other, km_other)
        return None

    def _pair(self, k, block_a, block_b, xa, xb, am_a, am_b, wa, wb, km_a, km_b):
        """One block pair in lockstep (docs/method.md#propagation)."""
        sa, sb = self.tower_a.steps, self.tower_b.steps
        ga, gb = self._groups_a.get(k), self._groups_b.get(k)
        if ga is None:  # nothing to exchange in this pair
            return sa(block_a, xa, am_a), sb(block_b, xb, am_b)
        # (a) qkv <- x'
        ca = self._hand(ga["qkv"], xb, wb, km_b)
        cb = self._hand(gb["qkv"], xa, wa, km_a)
        ctx_a = sa.attention_context(block_a, xa, am_a)  # (B, Na, Ca)
        ctx_b = sb.attention_context(block_b, xb, am_b)
        # (b) out-proj <- ctx' (progressive) or x'
        if self.propagation == "progressive":
            self._hand(ga["proj"], ctx_b, wb, km_b)
            self._hand(gb["proj"], ctx_a, wa, km_a)
        else:
            self._hand(ga["proj"], xb, wb, km_b, pooled=ca)
            self._hand(gb["proj"], xa, wa, km_a, pooled=cb)
        xa_attn = sa.attention_out(block_a, xa, ctx_a)
        xb_attn = sb.attention_out(block_b, xb, ctx_b)
        # (c) fc1, fc2 <- x' (uniform) or x'_attn
        if self.propagation == "uniform":
            self._hand(ga["mlp"], xb, wb, km_b, pooled=ca)
            self._hand(gb["mlp"], xa, wa, km_a, pooled=cb)
        else:
            self._hand(ga["mlp"], xb_attn, wb, km_b)
            self._hand(gb["mlp"], xa_attn, wa, km_a)
        out = sa.mlp_out(block_a, xa_attn), sb.mlp_out(block_b, xb_attn)
        for layers in (*ga.values(), *gb.values()):  # consumed: autograd holds what backward needs
            self._clear(layers)
        return out

    def _step(self, kind: str, i: int, j: int, k: int, xa, xb, am_a, am_b, wa, wb, km_a, km_b):
        """One entry of the lockstep schedule: a lone block of a ("a") or b ("b"), or pair k."""
        if kind == "a":
            return self.tower_a.steps(self.tower_a.blocks[i], xa, am_a), xb
        if kind == "b":
            return xa, self.tower_b.steps(self.tower_b.blocks[j], xb, am_b)
        return self._pair(k, self.tower_a.blocks[i], self.tower_b.blocks[j], xa, xb, am_a, am_b, wa, wb, km_a, km_b)

    def forward(
        self,
        inputs_a: dict[str, torch.Tensor],
        inputs_b: dict[str, torch.Tensor],
        *,
        return_layers: Sequence[int] | None = None,
        return_layers_b: Sequence[int] | None = None,
        rows_per_sample: int = 1,
    ) -> DualEncoderOutput:
        """Runs both towers in lockstep.

        Args:
            inputs_a: tower a's inputs (vision: ``{"pixel_values": (B, 3, H, W)}``).
            inputs_b: tower b's inputs (text: ``{"input_ids": (B, L), "attention_mask": (B, L)}``; audio:
                ``{"input_values": (B, T, 128)}``).
            return_layers: block indices (negative counts from the end) whose outputs, before the final norm,
                are returned in ``layers_a`` and, unless ``return_layers_b`` is given, ``layers_b``.
            return_layers_b: block indices of tower b, for towers of unequal depth.
            rows_per_sample: consecutive batch rows that belong to one sample (the 10 seconds of an AVE video, the
                5 frames of an AVS clip); the ``shuffled`` control then takes conditions from another sample.

        Returns:
            A :class:`DualEncoderOutput`.
        """
        ta, tb = self.tower_a, self.tower_b
        blocks_a, blocks_b = ta.blocks, tb.blocks
        want_a = want_b = None
        if return_layers is not None:
            want_a = _resolve_indices(return_layers, len(blocks_a), "return_layers")
            rb = return_layers if return_layers_b is None else return_layers_b
            want_b = _resolve_indices(
                rb, len(blocks_b), "return_layers_b" if return_layers_b is not None else "return_layers"
            )
        keep_a, keep_b = set(want_a or ()), set(want_b or ())
        saved_a: dict[int, torch.Tensor] = {}
        saved_b: dict[int, torch.Tensor] = {}

        xa, mask_a = ta.embed(inputs_a)  # (B, Na, Ca), (B, Na)
        xb, mask_b = tb.embed(inputs_b)
        am_a, am_b = ta.attention_mask(xa, mask_a), tb.attention_mask(xb, mask_b)
        wa = pooling_weights(mask_a, ta.num_prefix_tokens, self.pooling_a)  # pools a for b's layers
        wb = pooling_weights(mask_b, tb.num_prefix_tokens, self.pooling_b)
        self._rows_per_sample = int(rows_per_sample)
        km_a = mask_a if ta.has_padding else None  # MokA key masks (None: every token is real)
        km_b = mask_b if tb.has_padding else None
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        try:
            for kind, i, j, k in self._schedule:
                args = (kind, i, j, k, xa, xb, am_a, am_b, wa, wb, km_a, km_b)
                if recompute:  # recompute whole steps (no early stop): each ends by clearing its conditions
                    with set_checkpoint_early_stop(False):
                        xa, xb = checkpoint(self._step, *args, use_reentrant=False)
                else:
                    xa, xb = self._step(*args)
                if i in keep_a:
                    saved_a[i] = xa
                if j in keep_b:
                    saved_b[j] = xb
        finally:
            self.clear_conditions()
        return DualEncoderOutput(
            tokens_a=ta.finalize(xa),
            mask_a=mask_a,
            tokens_b=tb.finalize(xb),
            mask_b=mask_b,
            layers_a=None if want_a is None else [saved_a[i] for i in want_a],
            layers_b=None if want_b is None else [saved_b[j] for j in want_b],
            num_prefix_a=self.num_prefix_a,
            num_prefix_b=self.num_prefix_b,
        )

    def clear_conditions(self) -> None:
        """Drops every condition / context handed to the adapters (no tensor of a past batch stays referenced)."""
        self._clear(self._exchange_layers)

    @staticmethod
    def _clear(layers: Sequence[nn.Module]) -> None:
        for m in layers:
            if isinstance(m, CoLALinear):
                m.set_condition(None)
            else:
                m.set_context(None)

    def extra_repr(self) -> str:
        return (
            f"method={self.method}, propagation={self.propagation}, condition_pooling={self.condition_pooling}, "
            f"pairs={len(self.layer_pairs)}, adapted={len(self.adapted_pairs)}, "
            f"gradient_checkpointing={self.gradient_checkpointing}"
        )


def _fields_of(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in known}


@dataclass
class _Spec:
    """Where one kind of adapter goes in one tower: targets, fused splits, a block filter, the condition width."""

    tower: Tower
    stream: str
    targets: list[str]
    splits: dict[str, int]
    include: Any  # Callable[[str], bool] | None (None: no block of this kind)
    ctx: int | None


def _block_filter(names: list[str], blocks: Sequence[int]):
    """A name filter selecting the modules inside the given blocks, or ``None`` when there is none."""
    if not blocks:
        return None
    prefixes = tuple(names[i] + "." for i in blocks)
    return lambda name: name.startswith(prefixes)
