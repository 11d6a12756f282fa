"""A tower: one stream's pip backbone, runnable block by block with its family's :mod:`cola.models.block_steps`
(embeddings, blocks, final norm, prefix-token count and the stage of each adapter target)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cola.dicts import check_choice

from .block_steps import FAMILIES


class Tower(nn.Module):
    """One stream's backbone, runnable block by block.

    Args:
        model: the unmodified pip model (timm ``VisionTransformer``, HF ``BertModel`` or ``ASTModel``).
        family: ``vit`` | ``bert`` | ``ast``.

    Attributes:
        model: the wrapped model (its parameters live under ``model.``).
        family: the family name.
        steps: the family's :class:`BlockSteps`.
        num_prefix_tokens: tokens before the content tokens (ViT: cls + registers; BERT: [CLS]; AST: 2).
        hidden_size: token width C.
        context_size: width of the attention context (input of the out-projection).
        has_padding: whether inputs can be padded (text); then the mask matters.
        modality: the stream name, ``vision`` | ``text`` | ``audio`` (the family's).
        anchor: whether the other streams query this one one way (MokA's anchor; the family's).
    """

    def __init__(self, model: nn.Module, family: str) -> None:
        super().__init__()
        check_choice("family", family, sorted(FAMILIES))
        steps = FAMILIES[family]()
        if not isinstance(model, steps.model_types):
            raise ValueError(
                f"family {family!r} expects a {[t.__name__ for t in steps.model_types]}, got {type(model).__name__}"
            )
        self.model = model
        self.family = family
        self.steps = steps
        for i, block in enumerate(steps.blocks(model)):
            if not isinstance(block, steps.block_types):
                raise ValueError(f"{family} block {i} is a {type(block).__name__}, expected {steps.block_types}")
            steps.check_block(block)
        self.num_prefix_tokens = steps.num_prefix_tokens(model)
        self.hidden_size = steps.hidden_size(model)
        self.context_size = steps.context_size(model)
        self.has_padding = steps.has_padding
        self.modality = steps.modality
        self.anchor = steps.anchor

    @property
    def blocks(self) -> list[nn.Module]:
        return self.steps.blocks(self.model)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def block_names(self) -> list[str]:
        """Qualified names of the blocks inside ``model`` (e.g. ``blocks.3``, ``encoder.layer.3``)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        return [names[id(b)] for b in self.blocks]

    def embed(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens entering block 0 (B, N, C) and the token mask (B, N) bool, True = real token."""
        return self.steps.embed(self.model, inputs)

    def attention_mask(self, tokens: torch.Tensor, mask: torch.Tensor) -> Any:
        """The mask in the form the blocks' attention takes (``None`` where nothing is padded)."""
        return self.steps.attention_mask(self.model, tokens, mask)

    def finalize(self, tokens: torch.Tensor) -> torch.Tensor:
        """The model's final norm (ViT ``norm``, AST ``layernorm``; identity for BERT)."""
        return self.steps.finalize(self.model, tokens)

    def stage_of(self, name: str) -> str:
        """Stage ("qkv" | "proj" | "mlp") of a linear layer named relative to its block."""
        return self.steps.stage_of(name)

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole tower alone (no cross-stream exchange): final tokens (B, N, C) and mask (B, N)."""
        x, mask = self.embed(inputs)
        attn_mask = self.attention_mask(x, mask)
        for block in self.blocks:
            x = self.steps(block, x, attn_mask)
        return self.finalize(x), mask


def build_tower(*, family: str, **builder_kwargs: Any) -> Tower:
    """Builds a :class:`Tower` from YAML: ``family`` names a :data:`cola.models.block_steps.FAMILIES` class, whose
    ``build`` (its :mod:`cola.models.encoders` builder: ``vit`` -> :func:`build_vit`, ``bert`` -> :func:`build_bert`,
    ``ast`` -> :func:`build_ast`) gets the other keys."""
    check_choice("family", family, sorted(FAMILIES))
    return Tower(FAMILIES[family].build(**builder_kwargs), family)
