"""Shared fixtures: compose the Hydra configs as train.py does, with tiny CPU overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

import cola.resolvers  # noqa: F401  (registers the ${cola.*} resolvers)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny tensors run far faster on one thread than on two busy cores.
torch.set_num_threads(1)

# Small random towers for fast tests: no pretraining step, a 2-block ViT and a 2-layer BERT / AST that keep
# the MiniLM tokenizer's vocabulary. Equal depths, so no layer_map is needed.
TINY_TEST_OVERRIDES = [
    "model.assets=[]",
    "model.image_size=56",
    "model.vision.checkpoint_path=null",
    "model.vision.embed_dim=64",
    "model.vision.depth=2",
    "model.vision.num_heads=2",
    "~model.text.name_or_path",
    "+model.text.tiny={hidden_size:64,num_hidden_layers:2,num_attention_heads:2,intermediate_size:128,vocab_size:30522}",
    "model.audio.tiny={hidden_size:64,num_hidden_layers:2,num_attention_heads:2,intermediate_size:128}",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]


def compose_cfg(
    overrides: list[str], *, config_name: str = "train", tiny: bool = True, run_dir: Path | None = None
) -> DictConfig:
    """Composes ``configs/<config_name>.yaml`` like the entry point, optionally with the tiny test towers."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            config_name=config_name,
            overrides=(TINY_TEST_OVERRIDES if tiny else []) + overrides,
            return_hydra_config=True,
        )
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    return cfg


@pytest.fixture(scope="session")
def synthetic_refcoco(tmp_path_factory) -> Path:
    """A small synthetic grounding set in the refer layout, generated once per session."""
    from cola.data.synthetic import make_synthetic_refcoco

    root = tmp_path_factory.mktemp("synthetic_refcoco")
    make_synthetic_refcoco(root, num_images=40, seed=0)
    return root


@pytest.fixture(scope="session")
def ave_root(tmp_path_factory) -> Path:
    """A small synthetic AVE release (6 videos, 4 categories), prepared into frames and wavs."""
    root = tmp_path_factory.mktemp("ave") / "AVE_Dataset"
    from cola.data.ave_prepare import prepare_ave
    from cola.data.synthetic import make_synthetic_ave

    make_synthetic_ave(root, num_videos=6, seed=0, num_categories=4)
    prepare_ave(root, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def avs_root(tmp_path_factory) -> Path:
    """A small synthetic AVSBench (6 S4 and 5 MS3 clips)."""
    from cola.data.synthetic import make_synthetic_avs

    return make_synthetic_avs(tmp_path_factory.mktemp("avs") / "AVSBench", num_s4=6, num_ms3=5, seed=0)


def refcoco_datamodule(root: Path, *, image_size: int, **kwargs):
    """A RefCOCO DataModule on a synthetic set with the MiniLM tokenizer, short expressions and no augmentation."""
    from cola.data.refcoco import RefCOCODataModule
    from cola.models import minilm_path

    args = dict(root=str(root), image_size=image_size, max_query_len=12, tokenizer=minilm_path(), augment=None)
    return RefCOCODataModule(**{**args, **kwargs})


def resolve_all(cfg: DictConfig) -> dict:
    """Resolves every interpolation of the job config (the ``hydra`` node needs a running job, so it is left out)."""
    from omegaconf import OmegaConf

    return {
        k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
        for k in cfg
        if k != "hydra"
    }


def fast_dev_trainer(tmp_path: Path, **kwargs):
    """A quiet one-batch-per-stage CPU Lightning Trainer (``fast_dev_run``), no logger or checkpoints."""
    import lightning as L

    args = dict(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**args, **kwargs})
