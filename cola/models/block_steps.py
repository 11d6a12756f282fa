"""Block steps: run a backbone block in three stages by calling its own submodules (docs/method.md#dual-encoder).

The dual encoder needs each block's intermediate states to hand conditions across streams between its
sub-steps, so every backbone family gets one small class that splits a block's ``forward`` into

    ctx    = attention_context(block, x, mask)    # attention output just before the out-projection
    x_attn = attention_out(block, x, ctx)         # out-projection, dropout / layer scale / drop path, residual
    x_out  = mlp_out(block, x_attn)               # fc1, activation, fc2, residual

using only the block's submodules (the backbone code is never edited or copied), so adapters injected into
those submodules run as usual. Each class reproduces the untouched block's ``forward`` to 1e-6 (tested), and owns
its family's layer names: the stage of each (``stage_rules``) and the default adapter targets
(``target_layers``, ``fused_layers``; :mod:`cola.models.targets`).

Families: timm ViT ``Block`` (pre-norm, fused qkv), HF ``BertLayer`` (post-norm:
``x_attn = LN(dense(ctx) + x)``), HF ``ASTLayer`` (pre-norm, separate q/k/v). A :class:`cola.models.tower.Tower`
wraps a whole model with its family's steps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.layers import Attention as TimmAttention
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import ASTModel, BertModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTLayer,
)
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    eager_attention_forward as ast_eager_attention,
)
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.bert.modeling_bert import eager_attention_forward as bert_eager_attention

STAGES = ("qkv", "proj", "mlp")


def _hf_attention(module: nn.Module, q, k, v, mask, *, dropout: float, scaling: float, default) -> torch.Tensor:
    """Calls the attention backend the HF module itself would use (sdpa / eager / flash, from its config)."""
    interface = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, default)
    out, _ = interface(module, q, k, v, mask, dropout=dropout if module.training else 0.0, scaling=scaling)
    return out  # (B, N, H, D)


def _require(inputs: dict, key: str, family: str) -> torch.Tensor:
    if key not in inputs:
        raise ValueError(f"{family} tower inputs need key {key!r}, got keys {sorted(inputs)}")
    return inputs[key]


class BlockSteps:
    """Interface of a family: the three block stages plus the model-level pieces a :class:`Tower` needs."""

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[type, ...]] = ()
    block_types: ClassVar[tuple[type, ...]] = ()
    # (relative module name or prefix ending in ".", stage); the first match wins.
    stage_rules: ClassVar[tuple[tuple[str, str], ...]] = ()
    # Every linear layer of a block, relative to it, in paper order (q, k, v, out-proj, fc1, fc2): the default
    # adapter targets (model.targets reads them through cola.models.family_targets), and the fused ones with
    # their number of output slices (model.out_splits).
    target_layers: ClassVar[tuple[str, ...]] = ()
    fused_layers: ClassVar[dict[str, int]] = {}
    has_padding: ClassVar[bool] = False
    # The stream this family's towers feed (what per-stream settings, ``peft.reduction`` etc., are keyed by), the
    # name of its builder in cola.models.encoders (``model.<stream>.family`` in YAML picks it), and whether it is the
    # stream the others query one way (MokA's anchor: the text tokens).
    modality: ClassVar[str] = ""
    builder: ClassVar[str] = ""
    anchor: ClassVar[bool] = False

    @classmethod
    def build(cls, **kwargs: Any) -> nn.Module:
        """The family's pip backbone, built by its :mod:`cola.models.encoders` builder from ``kwargs``."""
        from . import encoders

        return getattr(encoders, cls.builder)(**kwargs)

    # ---- per block
    def attention_context(self, block: nn.Module, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """Attention output just before the out-projection: (B, N, C) -> (B, N, C_attn)."""
        raise NotImplementedError

    def attention_out(self, block: nn.Module, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        """Out-projection of ``ctx`` and the residual with the block input ``x``: (B, N, C)."""
        raise NotImplementedError

    def mlp_out(self, block: nn.Module, x_attn: torch.Tensor) -> torch.Tensor:
        """Feed-forward sub-block and its residual: (B, N, C)."""
        raise NotImplementedError

    def __call__(self, block: nn.Module, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        """The whole block, stage by stage (equals ``block.forward``)."""
        return self.mlp_out(block, self.attention_out(block, x, self.attention_context(block, x, mask)))

    def stage_of(self, name: str) -> str:
        """Stage ("qkv" | "proj" | "mlp") of a linear layer named relative to its block, e.g. ``attn.qkv``."""
        for rule, stage in self.stage_rules:
            if name == rule.rstrip(".") or name.startswith(rule if rule.endswith(".") else rule + "."):
                return stage
        raise ValueError(
            f"module {name!r} of a {self.family} block belongs to no stage; expected names under "
            f"{[r for r, _ in self.stage_rules]}"
        )

    # ---- per model
    def blocks(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) entering block 0 and their mask (B, N) bool, True = real token."""
        raise NotImplementedError

    def attention_mask(self, model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> Any:
        """The mask in the form the blocks' attention takes (``None``: no padding)."""
        return None

    def finalize(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The model's final norm (identity where it has none)."""
        return tokens

    def num_prefix_tokens(self, model: nn.Module) -> int:
        raise NotImplementedError

    def hidden_size(self, model: nn.Module) -> int:
        raise NotImplementedError

    def context_size(self, model: nn.Module) -> int:
        """Width of the attention context (the out-projection's input)."""
        raise NotImplementedError


class ViTBlockSteps(BlockSteps):
    """timm ``VisionTransformer`` / ``Block`` (pre-norm; DINOv2 has layer scale):

    ``x_attn = x + drop_path1(ls1(proj_drop(proj(ctx))))``, ``x_out = x_attn + drop_path2(ls2(mlp(norm2(x_attn))))``.
    """

    family = "vit"
    modality = "vision"
    builder = "build_vit"
    model_types = (VisionTransformer,)
    block_types = (TimmBlock,)
    stage_rules = (("attn.proj", "proj"), ("attn.", "qkv"), ("mlp.", "mlp"))
    target_layers = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    fused_layers = {"attn.qkv": 3}  # one adapter per q, k, v slice (official CMMergedLinear)

    def attention_context(self, block: nn.Module, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        attn = block.attn
        h = block.norm1(x)  # (B, N, C)
        B, N, _ = h.shape
        gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, D) each
        q, k = attn.q_norm(q), attn.k_norm(k)
        if attn.fused_attn:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
            )
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            o = attn.attn_drop(scores.softmax(dim=-1)) @ v
        o = o.transpose(1, 2).reshape(B, N, -1)  # (B, N, C_attn)
        o = attn.norm(o) if hasattr(attn, "norm") else o
        return o * gate if gate is not None else o

    def attention_out(self, block: nn.Module, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return x + block.drop_path1(block.ls1(block.attn.proj_drop(block.attn.proj(ctx))))

    def mlp_out(self, block: nn.Module, x_attn: torch.Tensor) -> torch.Tensor:
        return x_attn + block.drop_path2(block.ls2(block.mlp(block.norm2(x_attn))))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = model.patch_embed(_require(inputs, "pixel_values", self.family))  # (B, N_p, C) or (B, H, W, C)
        x = model._pos_embed(x)  # prefix tokens + positional embeddings: (B, N, C)
        x = model.norm_pre(model.patch_drop(x))
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, N)
        return x, mask

    def finalize(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model.norm(tokens)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return int(model.num_prefix_tokens)  # cls + registers

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.embed_dim)

    def context_size(self, model: nn.Module) -> int:
        return int(model.blocks[0].attn.proj.in_features)

    def check_block(self, block: nn.Module) -> None:
        if type(block.attn) is not TimmAttention:
            raise ValueError(f"ViTBlockSteps supports timm's Attention, got {type(block.attn).__name__}")


class BertLayerSteps(BlockSteps):
    """HF ``BertLayer`` (post-norm): ``x_attn = LN(dropout(dense(ctx)) + x)``, ``x_out = LN(dropout(fc2(act(fc1(x_attn)))) + x_attn)``."""

    family = "bert"
    modality = "text"
    builder = "build_bert"
    anchor = True
    model_types = (BertModel,)
    block_types = (BertLayer,)
    stage_rules = (
        ("attention.self.", "qkv"),
        ("attention.output.", "proj"),
        ("intermediate.", "mlp"),
        ("output.", "mlp"),
    )
    target_layers = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
    has_padding = True

    def attention_context(self, block: nn.Module, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        sa = block.attention.self
        shape = (*x.shape[:-1], -1, sa.attention_head_size)
        q = sa.query(x).view(shape).transpose(1, 2)  # (B, H, N, D)
        k = sa.key(x).view(shape).transpose(1, 2)
        v = sa.value(x).view(shape).transpose(1, 2)
        o = _hf_attention(sa, q, k, v, mask, dropout=sa.dropout.p, scaling=sa.scaling, default=bert_eager_attention)
        return o.reshape(*x.shape[:-1], -1).contiguous()  # (B, N, C)

    def attention_out(self, block: nn.Module, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return block.attention.output(ctx, x)  # BertSelfOutput: LayerNorm(dropout(dense(ctx)) + x)

    def mlp_out(self, block: nn.Module, x_attn: torch.Tensor) -> torch.Tensor:
        # BertLayer's feed-forward chunking (chunk_size_feed_forward) is a memory trick with the same result.
        return block.output(block.intermediate(x_attn), x_attn)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.encoder.layer)

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = _require(inputs, "input_ids", self.family)  # (B, L)
        x = model.embeddings(input_ids=ids, token_type_ids=inputs.get("token_type_ids"))  # (B, L, C)
        am = inputs.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if am is None else am.bool()  # (B, L)
        return x, mask

    def attention_mask(self, model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> Any:
        return create_bidirectional_mask(config=model.config, inputs_embeds=tokens, attention_mask=mask)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.config.hidden_size)

    def context_size(self, model: nn.Module) -> int:
        return int(model.encoder.layer[0].attention.output.dense.in_features)

    def check_block(self, block: nn.Module) -> None:
        if block.is_decoder or block.add_cross_attention:
            raise ValueError("BertLayerSteps supports encoder BERT layers (is_decoder=False, no cross-attention)")


class ASTLayerSteps(BlockSteps):
    """HF ``ASTLayer`` (pre-norm, separate q/k/v): ``x_attn = x + dropout(o_proj(ctx))``,
    ``x_out = x_attn + dropout(mlp(layernorm_after(x_attn)))``."""

    family = "ast"
    modality = "audio"
    builder = "build_ast"
    model_types = (ASTModel,)
    block_types = (ASTLayer,)
    stage_rules = (("attention.o_proj", "proj"), ("attention.", "qkv"), ("mlp.", "mlp"))
    # transformers >= 5 naming (SPEC section 5)
    target_layers = (
        "attention.q_proj",
        "attention.k_proj",
        "attention.v_proj",
        "attention.o_proj",
        "mlp.fc1",
        "mlp.fc2",
    )

    def attention_context(self, block: nn.Module, x: torch.Tensor, mask: Any = None) -> torch.Tensor:
        att = block.attention
        h = block.layernorm_before(x)  # (B, N, C)
        shape = (*h.shape[:-1], -1, att.head_dim)
        q = att.q_proj(h).view(shape).transpose(1, 2)  # (B, H, N, D)
        k = att.k_proj(h).view(shape).transpose(1, 2)
        v = att.v_proj(h).view(shape).transpose(1, 2)
        o = _hf_attention(
            att, q, k, v, mask, dropout=att.attention_dropout, scaling=att.scaling, default=ast_eager_attention
        )
        return o.reshape(*h.shape[:-1], -1).contiguous()  # (B, N, C)

    def attention_out(self, block: nn.Module, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        return x + block.dropout(block.attention.o_proj(ctx))

    def mlp_out(self, block: nn.Module, x_attn: torch.Tensor) -> torch.Tensor:
        return x_attn + block.dropout(block.mlp(block.layernorm_after(x_attn)))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.layers)

    def embed(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        values = _require(inputs, "input_values", self.family)  # (B, T, mel)
        cfg = model.config
        if values.ndim != 3 or tuple(values.shape[1:]) != (cfg.max_length, cfg.num_mel_bins):
            raise ValueError(
                f"ast tower expects input_values of shape (B, {cfg.max_length}, {cfg.num_mel_bins}) "
                f"(max_length, num_mel_bins), got {tuple(values.shape)}"
            )
        x = model.embeddings(values)  # (B, 2 + f t, C): [cls, distillation, patches]
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return x, mask

    def finalize(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        return model.layernorm(tokens)

    def num_prefix_tokens(self, model: nn.Module) -> int:
        return 2  # cls + distillation

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.config.hidden_size)

    def context_size(self, model: nn.Module) -> int:
        return int(model.layers[0].attention.o_proj.in_features)

    def check_block(self, block: nn.Module) -> None:
        return None


FAMILIES: dict[str, type[BlockSteps]] = {c.family: c for c in (ViTBlockSteps, BertLayerSteps, ASTLayerSteps)}


MODALITIES = {name: steps.modality for name, steps in FAMILIES.items()}
"""The stream name of each tower family (each class's ``modality``)."""
