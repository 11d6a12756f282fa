"""Shared fixtures and helpers: compose the Hydra configs as train.py does, with tiny CPU overrides; one helper per
purpose (a tiny task, head, encoder, batch, datamodule, trainer; :func:`perturb` for live adapter paths).

Pytest fixtures here are the session-scoped synthetic datasets (``synthetic_refcoco``, ``ave_root``, ``avs_root``):
what is built once and shared. Everything else is imported (``from tests.conftest import ...``) on purpose: the
helpers are factories each test calls with its own arguments (``make_task("lora", head=...)``,
``compose_cfg([...])``, ``hand_batch(batch_size=3)``), which a fixture could only hand over as a function; and the
constants (``TASK_IMAGE``, ``REFCOCO_IMAGE``, ``AV_IMAGE``, ``AUDIO_FRAMES``, ``HEAD_GEOMETRY``, ``FAST_RUN``) are
plain sizes and overrides tests build with and compare against, which a fixture would only wrap. Helpers only the
model tests use (``tower_inputs``, ``reference_forward``) live in ``tests/models/conftest.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
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


# ---------------------------------------------------------------- helpers shared by test modules
FAST_RUN = [
    "debug=fast",
    # a few batches per stage, as these tests were written for (debug=fast alone runs one per stage)
    "trainer.max_steps=4",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "data.limit_per_split=8",
    "data.batch_size=4",
    "data.eval_batch_size=8",
    "task.head.width=32",
    "task.head.ff=64",
    "task.head.layers=1",
    "task.head.heads=2",
]


def fast_cfg(root: Path, run_dir: Path, *overrides: str, config_name: str = "train"):
    """The config of a fast synthetic run in ``run_dir`` (as train.py composes it, with the tiny towers)."""
    return compose_cfg([*FAST_RUN, f"data.root={root}", *overrides], run_dir=run_dir, config_name=config_name)


def train_py(
    *args: str, cwd: Path = REPO, timeout: float = 600, script: str = "train.py"
) -> subprocess.CompletedProcess:
    """Runs ``python train.py ARGS`` (or ``script``) offline on one thread (deterministic, faster for tiny tensors)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLA_ROOT": str(REPO)}
    env.pop("COLA_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_args(root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """train.py arguments of the fast synthetic run (the same overrides the in-process tests compose)."""
    return [*TINY_TEST_OVERRIDES, *FAST_RUN, f"data.root={root}", f"hydra.run.dir={run_dir}", *overrides]


def make_ave(method: str = "cola", *, seed: int = 0, **kwargs):
    from cola.tasks.av_classification import AVEClassificationTask

    kwargs = {"d_model": 32, "dropout": 0.0, **kwargs}
    return AVEClassificationTask(make_av_encoder(method, seed=seed), **kwargs)


def ave_batch(batch_size: int = 2, seconds: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(batch_size, seconds, 3, AV_IMAGE, AV_IMAGE, generator=g),
        "input_values": torch.randn(batch_size, seconds, AUDIO_FRAMES, 128, generator=g),
        "labels": torch.randint(0, 29, (batch_size, seconds), generator=g),
    }


REFCOCO_IMAGE = 112


def make_dm(root, tokenizer_path, **kwargs):
    """A RefCOCODataModule on ``root`` at the test image size, no augmentation (kwargs override)."""
    from cola.data.refcoco import RefCOCODataModule

    args = dict(root=str(root), image_size=REFCOCO_IMAGE, tokenizer=tokenizer_path, batch_size=4, augment=None)
    args.update(kwargs)
    return RefCOCODataModule(**args)


def mask_bbox(mask: torch.Tensor) -> torch.Tensor:
    """xyxy extent (pixel edges) of a 2-D 0/1 mask."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    return torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()


TASK_IMAGE = 56


SMALL_HEAD = dict(name="fusion", width=32, layers=1, ff=64, heads=4, dropout=0.0, fusion_box="mlp", fusion_mask="conv")
"""The grounding head of :func:`make_task`: the fusion head at a test size (``head=`` overrides single keys)."""


def make_task(
    method: str = "cola",
    *,
    vit_name: str = "vit_small_patch14_dinov2",
    seed: int = 0,
    head: dict | None = None,
    **task_kwargs,
):
    from cola.models import DualEncoder, build_tower, family_out_splits, family_targets
    from cola.tasks.grounding import GroundingTask

    torch.manual_seed(seed)
    vision = build_tower(family="vit", name=vit_name, img_size=TASK_IMAGE, embed_dim=64, depth=2, num_heads=2)
    tiny_bert = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB)
    text = build_tower(family="bert", tiny=tiny_bert)
    peft = dict(GROUNDING_PEFT[method])
    encoder = DualEncoder(
        {"vision": vision, "text": text},
        peft=peft,
        targets={"vision": family_targets("vit"), "text": family_targets("bert")},
        out_splits={"vision": family_out_splits("vit")},
    )
    kwargs = dict(image_size=TASK_IMAGE, head={**SMALL_HEAD, **(head or {})}, max_query_len=40)
    kwargs.update(task_kwargs)
    return GroundingTask(encoder, **kwargs)


HEAD_GEOMETRY = dict(vision_dim=48, text_dim=32, num_prefix_tokens=1, grid_size=4, image_size=56)
"""The :class:`cola.models.heads.HeadGeometry` of :func:`fusion_head`: 48- and 32-wide tokens, a 4 x 4 grid."""


def fusion_head(**kw):
    """A tiny fusion grounding head (:class:`cola.models.heads.GroundingHead`, width 32, 2 layers); ``kw`` overrides
    :data:`HEAD_GEOMETRY` keys and the head's own arguments."""
    from cola.models.heads import GroundingHead, HeadGeometry

    geometry = HeadGeometry(**{k: kw.pop(k, v) for k, v in HEAD_GEOMETRY.items()})
    args = dict(d_fusion=32, fusion_layers=2, d_ff=64, heads=4, dropout=0.0)
    return GroundingHead(geometry, **{**args, **kw})


def hand_batch(batch_size: int = 2, seq_len: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Training fields of the RefCOCO batch (as :mod:`cola.data.refcoco` documents them) with box-shaped masks
    consistent with the boxes."""
    g = torch.Generator().manual_seed(seed)
    wh = 0.2 + 0.4 * torch.rand(batch_size, 2, generator=g)
    centre = wh / 2 + (1 - wh) * torch.rand(batch_size, 2, generator=g)
    box = torch.cat([centre, wh], dim=1)  # (B, 4) cx cy w h
    mask = torch.zeros(batch_size, TASK_IMAGE, TASK_IMAGE)
    for i, (cx, cy, w, h) in enumerate(box.tolist()):
        x0, x1 = round((cx - w / 2) * TASK_IMAGE), round((cx + w / 2) * TASK_IMAGE)
        y0, y1 = round((cy - h / 2) * TASK_IMAGE), round((cy + h / 2) * TASK_IMAGE)
        mask[i, y0:y1, x0:x1] = 1
    lengths = torch.arange(batch_size) % (seq_len - 2) + 3
    attention_mask = (torch.arange(seq_len)[None] < lengths[:, None]).long()  # (B, L), some padding
    return {
        "pixel_values": torch.randn(batch_size, 3, TASK_IMAGE, TASK_IMAGE, generator=g),
        "input_ids": torch.randint(1000, VOCAB, (batch_size, seq_len), generator=g) * attention_mask,
        "attention_mask": attention_mask,
        "box": box,
        "mask": mask,
    }


def perturb(module: torch.nn.Module, seed: int = 1, *, adapters_only: bool = True) -> None:
    """Moves the adapter parameters of ``module`` off their init (``+ 0.3 N(0, 1)``; B's are zero at init) so the
    adapter paths are live. ``adapters_only=False``: every parameter (a bare hypernetwork has no adapter prefix)."""
    from cola.peft import is_adapter_param

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if is_adapter_param(n) or not adapters_only:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def make_av_encoder(method: str = "cola", *, seed: int = 0):
    from cola.models import DualEncoder, build_tower, family_out_splits, family_targets

    torch.manual_seed(seed)
    vision = build_tower(
        family="vit", name="vit_small_patch14_dinov2", img_size=AV_IMAGE, embed_dim=64, depth=2, num_heads=2
    )
    tiny_ast = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    audio = build_tower(family="ast", tiny=tiny_ast, max_length=AUDIO_FRAMES)
    return DualEncoder(
        {"vision": vision, "audio": audio},
        peft=dict(AV_PEFT[method]),
        targets={"vision": family_targets("vit"), "audio": family_targets("ast")},
        out_splits={"vision": family_out_splits("vit")},
        anchor=None,
    )


AV_PEFT = {
    "cola": {"method": "cola", "rank": 4, "alpha": 8, "lambda_init": 0.1, "condition_pooling": "cls"},
    "lora": {"method": "lora", "rank": 4, "alpha": 8, "condition_pooling": "cls"},
    "frozen": {"method": "frozen"},
}


AUDIO_FRAMES = 100  # AST max_length: 1-s clips at a 10 ms shift


AV_IMAGE = 56  # 4 x 4 patches of 14


GROUNDING_PEFT = {
    "cola": {"method": "cola", "rank": 4, "alpha": 8},
    "lora": {"method": "lora", "rank": 4, "alpha": 8},
    "moka": {"method": "moka", "rank": 4, "alpha": 8},
    "vera": {"method": "vera", "rank": 8, "alpha": 4},
    "frozen": {"method": "frozen"},
}


VOCAB = 30522  # the MiniLM tokenizer's (BERT uncased) vocabulary, used by the datamodule tests


class EpochLosses(L.Callback):
    """Collects the training loss of every batch, per epoch."""

    def __init__(self) -> None:
        self.losses: dict[int, list[float]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.setdefault(trainer.current_epoch, []).append(float(loss))

    def epoch_means(self) -> list[float]:
        return [sum(v) / len(v) for _, v in sorted(self.losses.items())]


def two_epoch_run(samples: int, checkpoint_every: int) -> list[str]:
    """2 deterministic epochs of ``samples / 2`` batches, validation only at the end (so the final model is the
    selected one), last.ckpt every ``checkpoint_every`` steps."""
    return [
        f"data.limit_per_split={samples}",
        "data.batch_size=2",
        "trainer.max_epochs=2",
        "trainer.max_steps=-1",
        "trainer.limit_train_batches=null",
        "trainer.check_val_every_n_epoch=2",
        "trainer.deterministic=true",
        f"callbacks.model_checkpoint.every_n_train_steps={checkpoint_every}",
        "callbacks.model_checkpoint.monitor=val/miou",
    ]


# ------------------------------------------------------------ learning tests (tests/tasks/test_*_learning.py)
def fit_and_test(task, datamodule, tmp_path: Path, *, epochs: int, seed: int) -> dict[str, float]:
    """Trains ``task`` for ``epochs`` epochs on the data module's training split (no validation during training),
    then evaluates it on the data module's val and test loaders; returns both splits' metrics (``val/...``,
    ``<test split>/...``). The training samples are read once (in memory), shuffled by ``seed``."""
    from torch.utils.data import DataLoader

    L.seed_everything(seed, workers=True)  # the training order
    datamodule.setup("fit")
    train = datamodule.train_dataloader()
    samples = [s for s in (train.dataset[i] for i in range(len(train.dataset))) if s is not None]
    assert len(samples) == len(train.dataset)  # nothing unreadable
    loader = DataLoader(samples, batch_size=train.batch_size, shuffle=True, collate_fn=train.collate_fn)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        num_sanity_val_steps=0,  # fit gets no val loader: no validation during training
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, train_dataloaders=loader)
    (val,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    tests = trainer.test(task, datamodule=datamodule, verbose=False)
    return {**val, **{k: v for res in tests for k, v in res.items()}}


def heldout(metrics: dict[str, float], name: str, splits: tuple[str, ...] = ("val", "test")) -> float:
    """The unweighted mean of ``<split>/<name>`` over the held-out ``splits``."""
    return sum(metrics[f"{split}/{name}"] for split in splits) / len(splits)


def timed_runs(run, root: Path, runs_dir: Path, seeds, methods):
    """A learning test's calibration (``python -m tests.tasks.test_*_learning``): ``run(method, root, runs_dir,
    seed=seed)`` for every seed and method, yielding ``(seed, method, metrics, floor, seconds)``."""
    import time

    for seed in seeds:
        for method in methods:
            t0 = time.time()
            metrics, floor = run(method, root, runs_dir, seed=seed)
            yield seed, method, metrics, floor, time.time() - t0
