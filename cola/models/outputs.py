"""What :class:`cola.models.DualEncoder` returns (:class:`DualEncoderOutput`) and reports about its adapters
(:class:`DualEncoderReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cola.peft import InjectionReport


@dataclass
class DualEncoderOutput:
    """Every stream after its final norm, with masks and optional intermediate block outputs, keyed by stream.

    Attributes:
        tokens: stream -> (B, N, C) tokens after the final norm.
        masks: stream -> (B, N) bool, True = real token.
        layers: stream -> outputs of the requested blocks (before the final norm); only streams asked for.
        num_prefix: stream -> leading special tokens (ViT: cls + registers, BERT: 1, AST: 2).
    """

    tokens: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    layers: dict[str, list[torch.Tensor]]
    num_prefix: dict[str, int]


@dataclass
class DualEncoderReport:
    """What the encoder adapted: one :class:`InjectionReport` per adapted stream (none for frozen / full).

    For ``lora_param_matched``, ``lora_rank`` is the derived rank, ``params_cola`` the CoLA count it matches
    and ``params_lora`` the LoRA count it gives (both logged; never hand-set); ``param_match`` is the log line
    (:meth:`cola.peft.MatchedLoRA.describe`: under AdaLoRA, matched on the final budget). ``budget`` is an adaptive
    intra variant's rank budget at injection (:meth:`cola.peft.variants.IntraVariant.budget`).
    """

    method: str
    towers: dict[str, InjectionReport] = field(default_factory=dict)
    lora_rank: int | None = None
    params_cola: int | None = None
    params_lora: int | None = None
    param_match: str | None = None
    budget: dict | None = None

    @property
    def params_added(self) -> int:
        return sum(r.params_added for r in self.towers.values())

    def __str__(self) -> str:
        lines = [f"peft method {self.method}: {self.params_added:,} adapter parameters"]
        lines += [f"{stream} tower: {r}" for stream, r in self.towers.items()]
        if self.param_match is not None:
            lines.append(self.param_match)
        elif self.lora_rank is not None:
            lines.append(f"param-matched LoRA rank {self.lora_rank}: {self.params_lora:,} vs CoLA {self.params_cola:,}")
        if self.budget is not None:
            b, p = self.budget["budget"], self.budget["intra_params"]
            lines.append(
                f"intra rank budget: initial rank {self.budget['initial_rank']} -> target "
                f"{self.budget['target_rank']} over {self.budget['matrices']} matrices ({b['initial']} -> {b['target']} "
                f"triplets; intra parameters {p['initial']:,} -> {p['target']:,})"
            )
        return "\n".join(lines)
