"""Interference probes and lambda logging (``analysis.probes=true``), and linear CKA.

Per CoLA layer, after each backward pass (every ``every_n_steps``):

- ``probe/<stream>/<layer>/grad_intra`` and ``grad_inter``: gradient norms of the intra-modal path
  (A_L, B_L) and the inter-modal path (A_C, B_C, Phi's hypernetwork, lambda);
- ``probe/<stream>/<layer>/cos_A`` and ``cos_B``: cosine between the updates the optimiser receives for the
  intra and the inter down-projection (A_L vs A_C) and up-projection (B_L vs B_C). Near +1 the two paths
  are pushed the same way (redundant), near -1 they fight (interference), near 0 they are independent.
  Shared matrices (``sharing`` other than ``none``) have no separate pair and are skipped.

Plus, for every CoLA run, the learned lambda of each layer at the end of training (``lambda.json`` in the run folder
and, when W&B logs, a table and one summary value per layer, ``lambda/<stream>.<component>/<block>``:
:mod:`cola.lambdas`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import lightning as L
import torch

from cola.peft import CoLALinear

log = logging.getLogger(__name__)


def _norm(params) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.tensor(0.0)


def _cos(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return float(
        torch.nn.functional.cosine_similarity(a.detach().flatten().float(), b.detach().flatten().float(), dim=0)
    )


def cola_layers(module: torch.nn.Module) -> list[tuple[str, CoLALinear]]:
    """(short name, layer) of every CoLA layer: ``vision.blocks.3.attn.qkv`` style names."""
    out = []
    for name, m in module.named_modules():
        if isinstance(m, CoLALinear):
            short = re.sub(r"^(encoder\.)?towers\.(\w+)\.model\.", r"\2.", name)
            out.append((short, m))
    return out


def probe_values(module: torch.nn.Module) -> dict[str, float]:
    """The probe metrics of the current gradients (call after backward, before the optimiser step)."""
    values: dict[str, float] = {}
    for name, layer in cola_layers(module):
        intra = [layer.lora_A, layer.lora_B]
        inter = [p for n, p in layer.named_parameters() if n.startswith("cola_")]
        values[f"probe/{name}/grad_intra"] = float(_norm(intra))
        values[f"probe/{name}/grad_inter"] = float(_norm(inter))
        pairs = {
            "cos_A": (layer.lora_A, getattr(layer, "cola_A", None)),
            "cos_B": (layer.lora_B, getattr(layer, "cola_B", None)),
        }
        for key, (p_intra, p_inter) in pairs.items():
            if p_inter is not None:
                c = _cos(p_intra.grad, p_inter.grad)
                if c is not None:
                    values[f"probe/{name}/{key}"] = c
    return values


def lambda_values(module: torch.nn.Module) -> dict[str, list[float]]:
    """Learned lambda of every CoLA layer (three per fused qkv layer)."""
    return {name: getattr(layer, layer.gate).detach().float().cpu().tolist() for name, layer in cola_layers(module)}


class InterferenceProbe(L.Callback):
    """Logs :func:`probe_values` every ``every_n_steps`` optimiser steps (see the module docstring)."""

    def __init__(self, every_n_steps: int = 10) -> None:
        self.every_n_steps = every_n_steps
        self.last: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        if trainer.global_step % self.every_n_steps:
            return
        self.last = probe_values(pl_module)
        if self.last:
            pl_module.log_dict(self.last, on_step=True, on_epoch=False)


class LambdaLogger(L.Callback):
    """At the end of training, writes each CoLA layer's lambda to ``lambda.json`` and W&B (a table and the summary
    values :func:`cola.lambdas.summary_values` names)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        values = lambda_values(pl_module)
        if not values or not trainer.is_global_zero:
            return
        from cola.io import atomic_write_text

        atomic_write_text(self.run_dir / "lambda.json", json.dumps(values, indent=2))
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                from cola.lambdas import profile_from_layers, summary_values

                rows = [[name, i, v] for name, vs in values.items() for i, v in enumerate(vs)]
                lg.log_table(key="lambda/per_layer", columns=["layer", "slice", "lambda"], data=rows)
                # every layer's λ as a summary value, lambda/<stream>.<component>/<block>: what W&B reports plot
                lg.experiment.summary.update(summary_values(profile_from_layers(values)))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al., 2019) between two feature matrices (n, d1) and (n, d2)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    hsic = (x.t() @ y).norm() ** 2
    return float(hsic / ((x.t() @ x).norm() * (y.t() @ y).norm()).clamp_min(1e-12))
