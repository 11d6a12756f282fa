"""Intra-path variants of the LoRA path that LoRA and CoLA share (docs/method.md#intra-path-variants).

``peft.intra`` picks how the intra-modal path ``s B_L A_L`` of

    h = W0 x + b  +  s · B_L A_L drop(x)  +  λ · B_C Φ(c) A_C drop(x)          (CoLA, §3, Eq. 3)

is scaled, initialised, applied, merged and counted; CoLA's inter path ``λ B_C Φ(c) A_C`` is the same for every
choice. Each variant is one :class:`IntraVariant` object in the one table :data:`INTRA_VARIANTS`, found by name
with :func:`intra_variant`; layers, configs and parameter matching ask the object and never branch on the name:

- ``lora``: ``s = alpha / r`` (Hu et al., 2021), A kaiming-uniform, B zero — the default, unchanged.
- ``rslora``: ``s = alpha / sqrt(r)`` (Kalajdzievski, 2023); only the scale changes
  (:attr:`cola.peft.AdapterConfig.scaling` asks the variant for its denominator).
- ``dora``: weight-decomposed LoRA (Liu et al., 2024, Eq. 5)::

      W' = m * (W0 + s B A) / ||W0 + s B A||_row        m (d_out,) = ||W0||_row at init

  with the norm taken per output row (HF peft's ``use_dora=True``: ``torch.linalg.norm(W, dim=1)``, which HF calls
  "column-wise" in the paper's (d_in, d_out) layout) and detached from the graph (DoRA §4.3, as HF peft); the bias
  is not scaled. The magnitude is the trainable ``lora_magnitude``.
- ``pissa``: PiSSA (Meng et al., 2024): A0, B0 from the top-r singular triplets of W0, scaled as HF peft's
  ``init_lora_weights="pissa"`` (``s B0 A0 = U_r S_r V_r^T``, split evenly as ``sqrt(S_r / s)``), and the base
  weight replaced by the residual ``W0 - s B0 A0`` (so the model is the pretrained one at init). A0, B0 are kept as
  the frozen buffers ``lora_pissa_A0`` / ``lora_pissa_B0``: they are saved with the adapters, and loading them
  re-bases the residual exactly (``W_res += s (B0_cur A0_cur - B0_file A0_file)``), so a saved adapter loads onto
  the *original* pretrained weights without a second SVD having to agree with the first.

A fused layer (``out_splits = S``) gets every variant per slice: its own A/B per slice, PiSSA's SVD per row block,
and DoRA's row norms (a row lies in exactly one slice, so one magnitude over all d_out rows is per slice).

What a variant may add besides the layer's forward (the hooks the training loop asks every variant, through the
model-level functions of :mod:`cola.peft.inject`): a term of the training loss (:meth:`IntraVariant.training_losses`),
a check of the run's length (:meth:`IntraVariant.prepare`) and a hook after every optimiser step
(:meth:`IntraVariant.after_optimizer_step`); each gets every layer of the model that runs the variant, since such
state may span layers (a rank budget shared by the whole model). The variants above need none of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from cola.dicts import check_choice


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of every output row of a (d_out, d_in) weight: (d_out,) (HF peft ``get_weight_norm``)."""
    return torch.linalg.norm(weight, dim=1).to(weight.dtype)


def pissa_factors(weight: torch.Tensor, *, rank: int, scaling: float, out_splits: int = 1):
    """PiSSA's initial factors of ``weight`` (d_out, d_in), per row block of a fused layer.

    Full ``torch.linalg.svd`` in float32 per slice: ``W_s = U S V^T``, ``A0_s = sqrt(S_r / s) V_r^T`` (r, d_in),
    ``B0_s = U_r sqrt(S_r / s)`` (d_out / S, r), so ``s B0_s A0_s`` is the rank-r truncation of ``W_s``.

    Returns:
        (A0 (S r, d_in), B0 (d_out, r)) in float32, in the layout of ``lora_A`` / ``lora_B``.
    """
    a, b = [], []
    for w in weight.detach().float().chunk(out_splits, dim=0):
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)
        root = torch.sqrt(sv[:rank] / scaling)
        a.append(root[:, None] * vh[:rank])
        b.append(u[:, :rank] * root[None, :])
    return torch.cat(a), torch.cat(b)


# ---------------------------------------------------------------------------------------------------- the protocol
class IntraVariant:
    """One intra-path variant: what it changes in the path ``s B A drop(x)`` of a
    :class:`cola.peft.layers.LowRankLinear` (its ``lora_A`` (S r, d_in), ``lora_B`` (d_out, r), ``scaling``,
    ``base_layer`` and ``_delta_weight``). The defaults are plain LoRA; a variant overrides what it changes.

    Attributes:
        name: the ``peft.intra`` value.
        nonzero_b: how to name the layer's B when it does not start at zero (``None``: it does). B then cannot be
            shared with CoLA's inter path (``sharing=shared_b|full``), which would be switched on at init.
        moka_conflict: why MokA, whose B is shared by its self and cross terms, cannot run the variant (``None``:
            it can; MokA then only asks for the scale).
        adaptive: whether the layers' ranks change while training (then :meth:`ranks` reports them).
        plain: whether it is the path as LoRA has it, nothing changed (the one a method without a trained B A, e.g.
            VeRA, runs: every other variant reshapes that B A).
    """

    name: ClassVar[str] = ""
    nonzero_b: ClassVar[str | None] = None
    moka_conflict: ClassVar[str | None] = None
    adaptive: ClassVar[bool] = False
    plain: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # one object per name: a copied or pickled layer keeps the table's object
    def __copy__(self) -> IntraVariant:
        return self

    def __deepcopy__(self, memo: dict) -> IntraVariant:
        return self

    def __reduce__(self):
        return intra_variant, (self.name,)

    # ----------------------------------------------------------------------------------------------- config
    def denominator(self, rank: int) -> float:
        """The rank term of the intra scale ``s = alpha / denominator``."""
        return rank

    def check(self, config: Any) -> None:
        """Raises ``ValueError`` naming the key when ``config`` (an :class:`cola.peft.AdapterConfig`) holds settings
        the variant cannot run with (its own options included)."""

    def extra_params(self, *, rank: int, out_features: int, out_splits: int) -> int:
        """Trainable parameters the variant adds to A and B in one layer at ``rank``."""
        return 0

    def params(self, *, rank: int, in_features: int, out_features: int, out_splits: int) -> int:
        """Trainable parameters of the whole intra path of one layer at ``rank`` (A per slice, B, the variant's own),
        from its shapes alone (matches the built layer)."""
        return (
            out_splits * rank * in_features
            + out_features * rank
            + self.extra_params(rank=rank, out_features=out_features, out_splits=out_splits)
        )

    def final_rank(self, config: Any) -> int:
        """The rank per matrix the intra path ends training with (on average over the layers)."""
        return config.rank

    def with_ranks(self, options: Mapping[str, Any] | None, *, target_rank: int) -> Mapping[str, Any] | None:
        """The variant's options (``peft.<name>``) set for another final rank (an adaptive variant's
        param-matched LoRA); a fixed-rank variant has nothing to set."""
        return options

    # ----------------------------------------------------------------------------------------------- layer
    def init(self, layer: nn.Module) -> None:
        """Called once A (kaiming-uniform) and B (zero) exist: the variant's own init and tensors."""

    def down(self, layer: nn.Module) -> torch.Tensor:
        """The down-projection of the intra path, (S r, d_in): ``lora_A`` itself unless the variant reshapes it."""
        return layer.lora_A

    def base_output(
        self, layer: nn.Module, x: torch.Tensor, x_dropped: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The frozen part of the output and the row scale g (d_out,) that also scales the intra up-projection
        (``None``: none): ``(W0 x + b, None)`` unless the variant rescales rows.

        Args:
            x: the layer input.
            x_dropped: the intra path's dropped input when dropout is active (training), else ``None``.
        """
        return layer.base_layer(x), None

    def fold(self, layer: nn.Module, w: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The merged weight from ``w = W + s B A`` and what :meth:`unfold` needs to invert it."""
        return w, None

    def unfold(self, layer: nn.Module, w: torch.Tensor, kept: Any) -> torch.Tensor:
        """Inverse of :meth:`fold`: ``W + s B A`` from the merged weight."""
        return w

    def original(self, layer: nn.Module, w: torch.Tensor) -> torch.Tensor:
        """W0 as the pretrained model had it, from the unmerged base weight ``w``."""
        return w

    def ranks(self, layer: nn.Module) -> list[int]:
        """The rank of the intra path per slice."""
        return [layer.lora_B.shape[1]] * layer.out_splits

    # ----------------------------------------------------------------------------------------------- model
    def training_losses(self, layers: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
        """Terms added to the training loss, by name (logged as ``train/<name>``), over every layer of the model
        that runs this variant."""
        return {}

    def prepare(self, layers: Sequence[nn.Module], total_steps: int) -> None:
        """Called when training starts with the number of optimiser steps the trainer will take; raises
        ``ValueError`` naming the key when the run is too short for the variant."""

    def after_optimizer_step(self, layers: Sequence[nn.Module], step: int, total_steps: int) -> None:
        """Called after optimiser step ``step`` (0-based; gradients are still in ``.grad``) of ``total_steps``."""

    def budget(self, layers: Sequence[tuple[str, nn.Module]]) -> dict[str, Any] | None:
        """The rank budget of an adaptive variant (initial and final ranks, parameters at each); ``None``."""
        return None


# ---------------------------------------------------------------------------------------------------- the variants
class LoRA(IntraVariant):
    """``s = alpha / r``, A kaiming-uniform, B zero (Hu et al., 2021)."""

    name = "lora"
    plain = True


class RsLoRA(IntraVariant):
    """``s = alpha / sqrt(r)`` (Kalajdzievski, 2023); nothing else changes."""

    name = "rslora"

    def denominator(self, rank: int) -> float:
        return math.sqrt(rank)


class DoRA(IntraVariant):
    """``W' = m (W0 + s B A) / ||W0 + s B A||_row`` with the trainable magnitude ``lora_magnitude`` (d_out,)."""

    name = "dora"
    moka_conflict = "there is no intra-only update B A_S to normalise (DoRA)"

    def extra_params(self, *, rank: int, out_features: int, out_splits: int) -> int:
        return out_features  # one magnitude per output row

    def init(self, layer: nn.Module) -> None:
        # B = 0 at init, so ||W0 + s B A|| = ||W0||: DoRA starts as the frozen layer
        layer.lora_magnitude = nn.Parameter(row_norm(layer.base_layer.weight.detach()).clone())

    def scale(self, layer: nn.Module) -> torch.Tensor:
        """``m / ||W0 + s B A||_row`` (d_out,); the norm carries no gradient (DoRA §4.3), the magnitude does."""
        with torch.no_grad():
            norm = row_norm(layer.base_layer.weight + layer.delta_weight())
        return layer.lora_magnitude / norm

    def base_output(self, layer, x, x_dropped):
        """``g * W0 x + b`` with ``g`` = :meth:`scale`; under active dropout HF peft's
        ``W0 x + b + (g - 1) * W0 drop(x)`` (the magnitude then sees the dropped input, as HF peft)."""
        g = self.scale(layer)
        w, b = layer.base_layer.weight, layer.base_layer.bias
        if x_dropped is not None:
            out = layer.base_layer(x)
            return out + (g.to(out.dtype) - 1) * nn.functional.linear(x_dropped, w).reshape(out.shape), g
        h = nn.functional.linear(x, w)
        gh = g.to(h.dtype)
        return (h * gh if b is None else torch.addcmul(b.to(h.dtype), h, gh)), g

    def fold(self, layer, w):
        norm = row_norm(w)
        return (layer.lora_magnitude / norm)[:, None] * w, norm

    def unfold(self, layer, w, kept):
        return w / (layer.lora_magnitude / kept)[:, None]


class PiSSA(IntraVariant):
    """A0, B0 from W0's top-r SVD, the base replaced by the residual ``W0 - s B0 A0`` (buffers
    ``lora_pissa_A0`` / ``lora_pissa_B0``, re-based on load)."""

    name = "pissa"
    nonzero_b = "PiSSA's non-zero B_L"
    moka_conflict = (
        "PiSSA's non-zero B would switch the input-dependent cross term on at init, changing the pretrained model"
    )

    def init(self, layer: nn.Module) -> None:
        w = layer.base_layer.weight
        a0, b0 = pissa_factors(w, rank=layer.lora_B.shape[1], scaling=layer.scaling, out_splits=layer.out_splits)
        with torch.no_grad():
            layer.lora_A.copy_(a0)
            layer.lora_B.copy_(b0)
            layer.register_buffer("lora_pissa_A0", layer.lora_A.detach().clone())
            layer.register_buffer("lora_pissa_B0", layer.lora_B.detach().clone())
            layer._set_weight(
                w.double() - self.delta(layer, layer.lora_pissa_A0, layer.lora_pissa_B0), "PiSSA's residual"
            )
        layer.register_load_state_dict_pre_hook(_rebase_pissa_on_load)

    @staticmethod
    def delta(layer: nn.Module, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        """``s B0 A0`` per slice, in float64 (the residual is formed once, so its rounding is W0's own)."""
        return layer.scaling * layer._delta_weight(a0.double(), b0.double())

    def original(self, layer, w):
        return (w.double() + self.delta(layer, layer.lora_pissa_A0, layer.lora_pissa_B0)).to(w.dtype)


def _rebase_pissa_on_load(module, state_dict, prefix, *args) -> None:
    """Load pre-hook of a PiSSA layer: a state holding other initial factors than the layer's (another SVD, e.g.
    the run that trained them) re-bases the residual onto them, so the loaded A, B act on ``W0 - s B0 A0`` of *their*
    B0, A0 (docs/method.md#intra-path-variants). Shape mismatches are left to ``load_state_dict`` to report."""
    a0, b0 = state_dict.get(prefix + "lora_pissa_A0"), state_dict.get(prefix + "lora_pissa_B0")
    if a0 is None or b0 is None or a0.shape != module.lora_pissa_A0.shape or b0.shape != module.lora_pissa_B0.shape:
        return
    with torch.no_grad():
        a0, b0 = a0.to(module.lora_pissa_A0.device), b0.to(module.lora_pissa_B0.device)
        if torch.equal(a0, module.lora_pissa_A0) and torch.equal(b0, module.lora_pissa_B0):
            return
        current = PiSSA.delta(module, module.lora_pissa_A0, module.lora_pissa_B0)
        new = module.base_layer.weight.double() + current - PiSSA.delta(module, a0, b0)
        module._set_weight(new, "re-basing PiSSA's residual on the loaded factors")


@dataclass(frozen=True)
class AdaLoRAOptions:
    """``peft.adalora``: AdaLoRA's budget schedule (HF peft's ``AdaLoraConfig`` names in brackets). The initial
    rank is ``peft.rank`` (``init_r``); the number of training steps (``total_step``) comes from the trainer.

    Attributes:
        target_rank: the average rank per matrix at the end of the budget phase (``target_r``); ``None``:
            ``round(2 rank / 3)``, HF peft's default ratio (``target_r`` 8 of ``init_r`` 12).
        tinit: warm-up at the initial budget (``tinit``): optimiser steps (an int) or a fraction of the run's steps
            (a float in [0, 1), rounded down).
        tfinal: final phase at the target budget, masks fixed (``tfinal``): steps or a fraction, as ``tinit``.
        delta_t: steps between two budget allocations (``deltaT``).
        beta1: moving average of the sensitivity (``beta1``).
        beta2: moving average of the uncertainty (``beta2``).
        orth_reg_weight: weight of the orthogonality regulariser on P and Q in the training loss
            (``orth_reg_weight``, HF's default 0.5).
    """

    target_rank: int | None = None
    tinit: int | float = 0.1
    tfinal: int | float = 0.2
    delta_t: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5

    @classmethod
    def parse(cls, values: Any, *, rank: int) -> AdaLoRAOptions:
        """The options of a ``peft.adalora`` mapping (``None``: the defaults), each checked against ``rank``; errors
        name the key, the value and what it may be."""
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ValueError(f"peft.adalora must be a mapping of {[f.name for f in fields(cls)]}, got {values!r}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"peft.adalora has unknown key(s) {unknown}; valid keys are {known}")
        opts = cls(**dict(values))
        t = opts.target_rank
        if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= rank):
            raise ValueError(
                f"peft.adalora.target_rank must be an integer in [1, peft.rank={rank}] (the initial rank) or null "
                f"(2/3 of it), got {t!r}"
            )
        for key in ("tinit", "tfinal"):
            v = getattr(opts, key)
            if isinstance(v, bool) or not (
                (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0.0 <= v < 1.0)
            ):
                raise ValueError(
                    f"peft.adalora.{key} must be a number of optimiser steps (an int >= 0) or a fraction of the run's "
                    f"steps (a float in [0, 1)), got {v!r}"
                )
        if isinstance(opts.delta_t, bool) or not isinstance(opts.delta_t, int) or opts.delta_t < 1:
            raise ValueError(f"peft.adalora.delta_t must be a positive integer (steps), got {opts.delta_t!r}")
        for key in ("beta1", "beta2"):
            v = getattr(opts, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0:
                raise ValueError(f"peft.adalora.{key} must be a float in (0, 1), got {v!r}")
        w = opts.orth_reg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ValueError(f"peft.adalora.orth_reg_weight must be a number >= 0, got {w!r}")
        return opts

    def target(self, rank: int) -> int:
        """The target rank per matrix for the initial rank ``rank``."""
        return max(1, round(2 * rank / 3)) if self.target_rank is None else self.target_rank

    def phases(self, total_steps: int) -> tuple[int, int]:
        """(tinit, tfinal) in optimiser steps of a run of ``total_steps``."""
        return tuple(v if isinstance(v, int) else int(v * total_steps) for v in (self.tinit, self.tfinal))


ADALORA_STATE = ("ipt_A", "unc_A", "ipt_B", "unc_B", "ipt_E", "unc_E")
"""AdaLoRA's moving averages per layer, buffers ``lora_adalora_<name>``: the sensitivity ``ipt`` (HF peft's
``exp_avg_ipt``) and the uncertainty ``unc`` (``exp_avg_unc``) of every entry of P (``lora_B``), Λ (``lora_E``)
and Q (``lora_A``)."""


class AdaLoRA(IntraVariant):
    """AdaLoRA (Zhang et al., 2023), as HF peft's ``AdaLoraModel``: the intra update in SVD form
    ``ΔW = s P Λ Q`` per slice, ``P = lora_B`` (d_out, r), ``Λ = diag(lora_E)`` (``lora_E`` (S r, 1)),
    ``Q = lora_A`` (S r, d_in), ``s = alpha / (r + 1e-5)`` at the *initial* rank (HF's ``scaling / (ranknum +
    1e-5)``, ``ranknum`` never changes); P, Q normal(0, 0.02), Λ zero, so the layer starts as the frozen one.

    The rank budget is shared by every AdaLoRA matrix of the model (each slice of a fused layer is one matrix):
    after every optimiser step (:meth:`after_optimizer_step`, HF's ``update_and_allocate``) the sensitivity
    ``I = |p ∂L/∂p|`` of every entry of P, Λ, Q updates its moving averages ``Ī ← β1 Ī + (1-β1) I`` and
    ``Ū ← β2 Ū + (1-β2) |I - Ī|``; the score of triplet i is ``S(Λ_i) + mean_j S(Q_ij) + mean_k S(P_ki)`` with
    ``S = Ī Ū``; the budget (total kept triplets) stays at the initial one for ``tinit`` steps, then falls
    cubically, ``b(t) = b_T + (b_0 - b_T) (1 - (t - tinit) / (T - tfinal - tinit))^3``, to the target, and every
    ``delta_t`` steps the Λ entries of the triplets scoring at or below the (b_0 - b(t))-th lowest score are set
    to 0. At step ``T - tfinal`` the target budget is allocated once more and the moving averages are cleared; from
    then on the kept pattern is re-applied after every step (HF masks Λ in place rather than dropping rows). The
    orthogonality regulariser ``R = mean over P, Q of ||P^T P - I||_F, ||Q Q^T - I||_F`` is added to the training
    loss with ``orth_reg_weight``. The state — the moving averages, the kept pattern ``lora_adalora_mask`` (S r,)
    and the last step allocated ``lora_adalora_step`` — are buffers, saved in checkpoints and adapter files.
    """

    name = "adalora"
    nonzero_b = "AdaLoRA's P (lora_B, normal at init)"
    moka_conflict = (
        "AdaLoRA's P (normal at init) would switch the input-dependent cross term on at init, and masking the "
        "singular values Λ of the self term would not cut the rank of the cross term's update"
    )
    adaptive = True

    # ----------------------------------------------------------------------------------------------- config
    def denominator(self, rank: int) -> float:
        return rank + 1e-5

    def options(self, config: Any) -> AdaLoRAOptions:
        return AdaLoRAOptions.parse(config.adalora, rank=config.rank)

    def check(self, config: Any) -> None:
        self.options(config)

    def extra_params(self, *, rank: int, out_features: int, out_splits: int) -> int:
        return out_splits * rank  # the singular values Λ, one per triplet

    def final_rank(self, config: Any) -> int:
        return self.options(config).target(config.rank)

    def with_ranks(self, options: Mapping[str, Any] | None, *, target_rank: int) -> dict[str, Any]:
        """``peft.adalora`` with another target rank (the param-matched LoRA's)."""
        return {**dict(options or {}), "target_rank": target_rank}

    # ----------------------------------------------------------------------------------------------- layer
    def options_of(self, layer: nn.Module) -> AdaLoRAOptions:
        """The options of a built layer (parsed once, at init)."""
        return layer.adalora_options

    def init(self, layer: nn.Module) -> None:
        layer.adalora_options = self.options(layer.config)
        with torch.no_grad():  # HF peft's reset_lora_parameters: Q, P normal(0, 0.02), Λ zero
            nn.init.normal_(layer.lora_A, mean=0.0, std=0.02)
            nn.init.normal_(layer.lora_B, mean=0.0, std=0.02)
        a = layer.lora_A
        layer.lora_E = nn.Parameter(torch.zeros(a.shape[0], 1, dtype=a.dtype, device=a.device))
        for name in ADALORA_STATE:
            ref = {"A": layer.lora_A, "B": layer.lora_B, "E": layer.lora_E}[name[-1]]
            layer.register_buffer(f"lora_adalora_{name}", torch.zeros_like(ref, requires_grad=False))
        layer.register_buffer("lora_adalora_mask", torch.ones(a.shape[0], dtype=torch.bool, device=a.device))
        layer.register_buffer("lora_adalora_step", torch.tensor(-1, dtype=torch.long, device=a.device))

    def down(self, layer: nn.Module) -> torch.Tensor:
        return layer.lora_A * layer.lora_E  # Λ Q (S r, d_in)

    def ranks(self, layer: nn.Module) -> list[int]:
        return [int(k) for k in layer.lora_adalora_mask.reshape(layer.out_splits, -1).sum(dim=1)]

    # ----------------------------------------------------------------------------------------------- model
    def _settings(self, layers: Sequence[nn.Module]) -> AdaLoRAOptions:
        """The schedule every layer shares (one budget for the model); raises if layers disagree."""
        opts = [self.options_of(m) for m in layers]
        schedule = {(o.tinit, o.tfinal, o.delta_t, o.beta1, o.beta2, o.orth_reg_weight) for o in opts}
        if len(schedule) > 1:
            raise ValueError(f"AdaLoRA layers of one model must share peft.adalora's schedule, got {sorted(schedule)}")
        return opts[0]

    def training_losses(self, layers: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
        weight = self._settings(layers).orth_reg_weight if layers else 0.0
        if not weight:
            return {}
        norms = []
        for m in layers:  # per layer Q then P (HF's parameter order), one matrix per slice
            s, r = m.out_splits, m.lora_B.shape[1]
            q = m.lora_A.reshape(s, r, -1)
            p = m.lora_B.reshape(s, -1, r)
            eye = torch.eye(r, dtype=q.dtype, device=q.device)
            for cov in (q @ q.transpose(1, 2), p.transpose(1, 2) @ p):  # (S, r, r)
                norms.append(torch.linalg.matrix_norm(cov - eye, ord="fro"))
        return {"orth_reg": weight * (torch.cat(norms).sum() / sum(n.numel() for n in norms))}

    def prepare(self, layers: Sequence[nn.Module], total_steps: int) -> None:
        if not layers:
            return
        opts = self._settings(layers)
        tinit, tfinal = opts.phases(total_steps)
        if tinit >= total_steps - tfinal:
            raise ValueError(
                f"peft.adalora.tinit={opts.tinit!r} ({tinit} steps) and peft.adalora.tfinal={opts.tfinal!r} ({tfinal} "
                f"steps) leave no budget phase in the run's {total_steps} optimiser steps (AdaLoRA needs tinit < "
                "steps - tfinal); lower them or train longer"
            )

    def _budgets(self, layers: Sequence[nn.Module]) -> tuple[int, int]:
        """(initial budget b_0, target budget b_T): kept triplets over every matrix of the model."""
        initial = sum(m.lora_A.shape[0] for m in layers)
        target = sum(self.options_of(m).target(m.lora_B.shape[1]) * m.out_splits for m in layers)
        return initial, target

    def after_optimizer_step(self, layers: Sequence[nn.Module], step: int, total_steps: int) -> None:
        """HF peft's ``AdaLoraModel.update_and_allocate(step)`` with ``total_step = total_steps``."""
        if not layers or step <= int(layers[0].lora_adalora_step):
            return  # this step was allocated already (a checkpoint written after it)
        opts = self._settings(layers)
        tinit, tfinal = opts.phases(total_steps)
        initial, target = self._budgets(layers)
        last = total_steps - tfinal
        with torch.no_grad():
            if step < last:
                self._update_importance(layers, opts)
                if step <= tinit:
                    budget, allocate = initial, False
                else:
                    decay = 1 - (step - tinit) / (last - tinit)
                    budget, allocate = int((initial - target) * decay**3 + target), step % opts.delta_t == 0
                if allocate:
                    self._mask_to_budget(layers, initial - budget)
            elif step == last:  # the final allocation at the target budget, then the moving averages are dropped
                self._mask_to_budget(layers, initial - target)
                for m in layers:
                    for name in ADALORA_STATE:
                        getattr(m, f"lora_adalora_{name}").zero_()
            else:  # the final phase: the kept pattern is re-applied after every step
                for m in layers:
                    m.lora_E.masked_fill_(~m.lora_adalora_mask[:, None], 0.0)
            for m in layers:
                m.lora_adalora_step.fill_(step)

    @staticmethod
    def _update_importance(layers: Sequence[nn.Module], opts: AdaLoRAOptions) -> None:
        b1, b2 = opts.beta1, opts.beta2
        for m in layers:
            for key, p in (("A", m.lora_A), ("B", m.lora_B), ("E", m.lora_E)):
                if p.grad is None:  # no gradient this step (a skipped step): nothing observed
                    continue
                ipt_avg, unc_avg = getattr(m, f"lora_adalora_ipt_{key}"), getattr(m, f"lora_adalora_unc_{key}")
                ipt = (p * p.grad).abs()
                new_ipt = b1 * ipt_avg + (1 - b1) * ipt
                new_unc = b2 * unc_avg + (1 - b2) * (ipt - new_ipt).abs()
                ok = torch.isfinite(ipt)  # an overflowed gradient (fp16 scaling) leaves the averages as they were
                ipt_avg.copy_(torch.where(ok, new_ipt, ipt_avg))
                unc_avg.copy_(torch.where(ok, new_unc, unc_avg))

    @staticmethod
    def triplet_scores(layer: nn.Module) -> torch.Tensor:
        """The importance of every triplet of ``layer``, (S r,): ``S(Λ_i) + (mean_j S(Q_ij) + mean_k S(P_ki))``,
        ``S = ipt * unc`` (HF peft's ``_element_score`` and ``_combine_ipt``)."""
        s, r = layer.out_splits, layer.lora_B.shape[1]

        def score(key: str) -> torch.Tensor:
            return getattr(layer, f"lora_adalora_ipt_{key}") * getattr(layer, f"lora_adalora_unc_{key}")

        q = torch.mean(score("A"), dim=1)  # (S r,)
        p = torch.mean(score("B").reshape(s, -1, r), dim=1).reshape(-1)  # per slice's rows: (S r,)
        return score("E").view(-1) + torch.stack([q, p], dim=1).sum(dim=1)

    def _mask_to_budget(self, layers: Sequence[nn.Module], drop: int) -> None:
        """Keeps the triplets scoring above the ``drop``-th lowest score of the model; Λ of the others is set to 0."""
        scores = [self.triplet_scores(m) for m in layers]
        threshold = torch.kthvalue(torch.cat(scores), k=drop)[0] if drop > 0 else None
        for m, sc in zip(layers, scores, strict=True):
            keep = torch.ones_like(sc, dtype=torch.bool) if threshold is None else sc > threshold
            m.lora_E.masked_fill_(~keep[:, None], 0.0)
            m.lora_adalora_mask.copy_(keep)

    def budget(self, layers: Sequence[tuple[str, nn.Module]]) -> dict[str, Any] | None:
        """Initial, target and current (final, after training) ranks and intra-path parameters: a triplet costs a
        row of Q (d_in), a column of P's slice (d_out / S) and one Λ."""
        if not layers:
            return None
        mods = [m for _, m in layers]
        initial, target = self._budgets(mods)

        def cost(m: nn.Module) -> int:
            return m.in_features + m.out_features // m.out_splits + 1

        ranks = {n: m.intra_ranks() for n, m in layers}
        init_rank = sorted({m.lora_B.shape[1] for m in mods})
        target_rank = sorted({self.options_of(m).target(m.lora_B.shape[1]) for m in mods})
        return {
            "initial_rank": init_rank[0] if len(init_rank) == 1 else init_rank,
            "target_rank": target_rank[0] if len(target_rank) == 1 else target_rank,
            "matrices": sum(m.out_splits for m in mods),
            "budget": {"initial": initial, "target": target, "final": sum(sum(r) for r in ranks.values())},
            "intra_params": {
                "initial": sum(m.lora_A.shape[0] * cost(m) for m in mods),
                "target": sum(self.options_of(m).target(m.lora_B.shape[1]) * m.out_splits * cost(m) for m in mods),
                "final": sum(sum(ranks[n]) * cost(m) for n, m in layers),
            },
            "ranks": ranks,
        }


# ---------------------------------------------------------------------------------------------------- the table
INTRA_VARIANTS: dict[str, IntraVariant] = {v.name: v for v in (LoRA(), DoRA(), RsLoRA(), PiSSA(), AdaLoRA())}
"""Every ``peft.intra`` value and its variant object: the one table a variant is selected from."""


def intra_variant(name: Any) -> IntraVariant:
    """The variant ``name`` of :data:`INTRA_VARIANTS`; raises ``ValueError`` naming the choices."""
    check_choice("intra", name, sorted(INTRA_VARIANTS))
    return INTRA_VARIANTS[name]


# ---------------------------------------------------------------------------------------------------- the layer side
class IntraVariantMixin:
    """What :class:`cola.peft.layers.LowRankLinear` does with its variant (``self.variant``): the delta, the merge
    and the original weight, each asking the variant what it changes."""

    variant: IntraVariant = INTRA_VARIANTS["lora"]

    @property
    def intra(self) -> str:
        """The ``peft.intra`` name of the layer's variant."""
        return self.variant.name

    def down_weight(self) -> torch.Tensor:
        """The intra path's down-projection (S r, d_in) (:meth:`IntraVariant.down`)."""
        return self.variant.down(self)

    def delta_weight(self) -> torch.Tensor:
        """``s B A`` per slice, (d_out, d_in)."""
        return self.scaling * self._delta_weight(self.down_weight(), self.lora_B)

    def intra_ranks(self) -> list[int]:
        """The intra path's rank per slice (:meth:`IntraVariant.ranks`; changes in training for an adaptive one)."""
        return self.variant.ranks(self)

    def _set_weight(self, new: torch.Tensor, what: str = "merging the adapter") -> None:
        w = self.base_layer.weight
        if not torch.isfinite(new).all():
            raise FloatingPointError(f"{self.adapter_name}: {what} gives non-finite weights; left unchanged")
        w.data.copy_(new.to(w.dtype))

    # ----------------------------------------------------------------------------------------------- weights
    def _merged_from(self, w: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(merged weight, what unmerging needs: DoRA's row norm) from the unmerged base weight ``w``."""
        return self.variant.fold(self, w + self.delta_weight())

    def _unmerged_from(self, w: torch.Tensor, kept: Any) -> torch.Tensor:
        return self.variant.unfold(self, w, kept) - self.delta_weight()

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The weight the intra path folds into: ``W0 + s B A`` (DoRA: ``m (W0 + s B A) / ||.||``; PiSSA:
        ``W_res + s B A = W0 + s (B A - B0 A0)``), merged or not."""
        if self.merged:
            return self.base_layer.weight.detach().clone()
        return self._merged_from(self.base_layer.weight)[0]

    @torch.no_grad()
    def original_weight(self) -> torch.Tensor:
        """W0 as the pretrained model had it (PiSSA: ``W_res + s B0 A0``; undoes a merge first)."""
        w = self.base_layer.weight.detach()
        if self.merged:
            w = self._unmerged_from(w, getattr(self, "_merge_norm", None))
        return self.variant.original(self, w).clone()

    @torch.no_grad()
    def merge(self) -> None:
        """Folds the intra path into W0 (idempotent; DoRA: ``W0 <- m (W0 + s B A) / ||.||``, the norm kept for
        :meth:`unmerge`); any input-dependent path keeps running."""
        if not self.merged:
            new, self._merge_norm = self._merged_from(self.base_layer.weight)
            self._set_weight(new)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self._set_weight(self._unmerged_from(self.base_layer.weight, self._merge_norm))
            self.merged = False
