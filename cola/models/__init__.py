"""Towers and the dual encoder: pip backbones (timm, transformers), block steps and lockstep propagation.

- :mod:`cola.models.encoders` builds the unmodified towers (DINOv2 ViT, BERT, AST);
- :mod:`cola.models.block_steps` runs a block in three stages with its own submodules and wraps a model
  as a :class:`Tower`;
- :mod:`cola.models.dual_encoder` runs two towers in lockstep and hands each adapter its condition
  (docs/method.md#dual-encoder).
"""

from .block_steps import ASTLayerSteps, BertLayerSteps, BlockSteps, Tower, ViTBlockSteps, build_tower
from .dual_encoder import (
    DualEncoder,
    DualEncoderOutput,
    DualEncoderReport,
    pool_tokens,
    pooling_weights,
    resolve_layer_pairs,
)
from .encoders import build_ast, build_bert, build_vit, minilm_path, resize_ast_position_embeddings

__all__ = [
    "ASTLayerSteps",
    "BertLayerSteps",
    "BlockSteps",
    "DualEncoder",
    "DualEncoderOutput",
    "DualEncoderReport",
    "Tower",
    "ViTBlockSteps",
    "build_ast",
    "build_bert",
    "build_tower",
    "build_vit",
    "minilm_path",
    "pool_tokens",
    "pooling_weights",
    "resize_ast_position_embeddings",
    "resolve_layer_pairs",
]
