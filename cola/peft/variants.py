"""Intra-path variants of the LoRA path that LoRA and CoLA share (docs/method.md#intra-path-variants).

``peft.intra`` picks how the intra-modal path ``s B_L A_L`` is scaled, initialised and applied; CoLA's inter path
``lambda B_C Phi(c) A_C`` is the same for every choice:

- ``lora``: ``s = alpha / r`` (Hu et al., 2021), A kaiming-uniform, B zero — the default, unchanged.
- ``rslora``: ``s = alpha / sqrt(r)`` (Kalajdzievski, 2023); only the scale changes
  (:attr:`cola.peft.AdapterConfig.scaling` is the one place it is computed).
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
"""

from __future__ import annotations

import torch
from torch import nn


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


class IntraVariantMixin:
    """DoRA and PiSSA for :class:`cola.peft.layers.LowRankLinear` (its ``lora_A``, ``lora_B``, ``scaling``,
    ``base_layer`` and ``_delta_weight``); ``lora`` and ``rslora`` need nothing here."""

    intra: str = "lora"

    # ----------------------------------------------------------------------------------------------- init
    def _init_variant(self) -> None:
        w = self.base_layer.weight
        if self.intra == "dora":
            # B = 0 at init, so ||W0 + s B A|| = ||W0||: DoRA starts as the frozen layer
            self.lora_magnitude = nn.Parameter(row_norm(w.detach()).clone())
        elif self.intra == "pissa":
            a0, b0 = pissa_factors(w, rank=self.lora_B.shape[1], scaling=self.scaling, out_splits=self.out_splits)
            with torch.no_grad():
                self.lora_A.copy_(a0)
                self.lora_B.copy_(b0)
                self.register_buffer("lora_pissa_A0", self.lora_A.detach().clone())
                self.register_buffer("lora_pissa_B0", self.lora_B.detach().clone())
                self._set_weight(
                    w.double() - self._pissa_delta(self.lora_pissa_A0, self.lora_pissa_B0), "PiSSA's residual"
                )
            self.register_load_state_dict_pre_hook(_rebase_pissa_on_load)

    def _pissa_delta(self, a0: torch.Tensor, b0: torch.Tensor) -> torch.Tensor:
        """``s B0 A0`` per slice, in float64 (the residual is formed once, so its rounding is W0's own)."""
        return self.scaling * self._delta_weight(a0.double(), b0.double())

    def _set_weight(self, new: torch.Tensor, what: str = "merging the adapter") -> None:
        w = self.base_layer.weight
        if not torch.isfinite(new).all():
            raise FloatingPointError(f"{self.adapter_name}: {what} gives non-finite weights; left unchanged")
        w.data.copy_(new.to(w.dtype))

    # ----------------------------------------------------------------------------------------------- DoRA
    def dora_scale(self) -> torch.Tensor:
        """``m / ||W0 + s B A||_row`` (d_out,); the norm carries no gradient (DoRA §4.3), the magnitude does."""
        with torch.no_grad():
            norm = row_norm(self.base_layer.weight + self.delta_weight())
        return self.lora_magnitude / norm

    def dora_base(self, x: torch.Tensor, x_dropped: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
        """The frozen part of DoRA's output: ``g * W0 x + b``; under active dropout HF peft's
        ``W0 x + b + (g - 1) * W0 drop(x)`` (the magnitude then sees the dropped input, as HF peft).

        Args:
            x: the layer input.
            x_dropped: the dropped input of the intra path when dropout is active (training), else ``None``.
            g: :meth:`dora_scale`.
        """
        w, b = self.base_layer.weight, self.base_layer.bias
        if x_dropped is not None:
            out = self.base_layer(x)
            return out + (g.to(out.dtype) - 1) * nn.functional.linear(x_dropped, w).reshape(out.shape)
        h = nn.functional.linear(x, w)
        g = g.to(h.dtype)
        return h * g if b is None else torch.addcmul(b.to(h.dtype), h, g)

    # ----------------------------------------------------------------------------------------------- weights
    def _merged_from(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(merged weight, the row norm it used — DoRA only) from the unmerged base weight ``w``."""
        w = w + self.delta_weight()
        if self.intra != "dora":
            return w, None
        norm = row_norm(w)
        return (self.lora_magnitude / norm)[:, None] * w, norm

    def _unmerged_from(self, w: torch.Tensor, norm: torch.Tensor | None) -> torch.Tensor:
        if self.intra == "dora":
            w = w / (self.lora_magnitude / norm)[:, None]
        return w - self.delta_weight()

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
        if self.intra == "pissa":
            w = (w.double() + self._pissa_delta(self.lora_pissa_A0, self.lora_pissa_B0)).to(w.dtype)
        return w.clone()

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
        current = module._pissa_delta(module.lora_pissa_A0, module.lora_pissa_B0)
        new = module.base_layer.weight.double() + current - module._pissa_delta(a0, b0)
        module._set_weight(new, "re-basing PiSSA's residual on the loaded factors")
