"""Towers and the dual encoder: pip backbones (timm, transformers), block steps and lockstep propagation.

- :mod:`cola.models.encoders` builds the unmodified towers (DINOv2 ViT, BERT, AST);
- :mod:`cola.models.block_steps` runs a block in three stages with its own submodules (one class per backbone
  family, which also owns the family's layer names); :mod:`cola.models.tower` wraps a model as a :class:`Tower`;
- :mod:`cola.models.dual_encoder` runs two towers, keyed by stream name, in lockstep and hands each adapter its
  condition (docs/method.md#dual-encoder); :mod:`cola.models.lockstep` holds its pooling and pairing helpers,
  :mod:`cola.models.placement` where its adapters go, :mod:`cola.models.outputs` what it returns;
- :mod:`cola.models.targets` selects each family's adapter targets by block stage (docs/method.md#targets).
"""

from .block_steps import ASTLayerSteps, BertLayerSteps, BlockSteps, ViTBlockSteps
from .dual_encoder import DualEncoder, DualEncoderOutput, DualEncoderReport
from .encoders import build_ast, build_bert, build_vit, minilm_path, resize_ast_position_embeddings
from .lockstep import pool_tokens, pooling_weights, resolve_layer_pairs
from .targets import family_out_splits, family_targets
from .tower import Tower, build_tower

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
    "family_out_splits",
    "family_targets",
    "minilm_path",
    "pool_tokens",
    "pooling_weights",
    "resize_ast_position_embeddings",
    "resolve_layer_pairs",
]
