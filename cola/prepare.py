"""What a run builds before it starts, when it is missing: the task's synthetic set (``data.root: null``) and the
model's cached files (``model.assets``, e.g. the tiny ViT's pretrained weights). Each is a ``_partial_`` config of a
library function that takes the path to create (:mod:`cola.data.synthetic`, :mod:`cola.models.pretrain`)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cola.validation import SetupError

log = logging.getLogger("cola.harness")  # the run's own log lines, whichever module writes them


def _build(builder: DictConfig, what: str, path: Path) -> None:
    """Calls a builder in this process: a ``_partial_`` config of a library function that takes the path to
    create, e.g. :func:`cola.data.synthetic.make_synthetic_refcoco` or :func:`cola.models.pretrain.pretrain_tiny_vit`."""
    target = builder.get("_target_")
    args = ", ".join([repr(str(path))] + [f"{k}={v!r}" for k, v in builder.items() if not str(k).startswith("_")])
    log.info("building %s: %s(%s)", what, target, args)
    try:
        build = instantiate(builder)
    except InstantiationException as e:
        raise SetupError(f"building {what}: the builder _target_={target!r} could not be instantiated: {e}") from None
    try:
        build(path)
    except (OSError, ValueError) as e:
        raise SetupError(f"building {what} failed ({type(e).__name__}: {e}): {target}") from None


def ensure_assets(cfg: DictConfig) -> None:
    """Builds the model's missing cached files (e.g. the tiny vision tower's pretrained weights)."""
    for asset in cfg.model.get("assets") or []:  # each: path + builder (a function taking the path)
        if not Path(asset.path).is_file():
            _build(asset.builder, f"model asset {asset.path}", Path(asset.path))


def resolve_data_root(cfg: DictConfig) -> None:
    """``data.root: null`` means the task's synthetic set: generate it once (deterministic) and point at it."""
    if cfg.data.get("root") is not None:
        return
    synth = cfg.task.get("synthetic")
    if synth is None:
        raise SetupError(f"task {cfg.task.name} needs data.root=PATH (no synthetic set is defined for it)")
    root = Path(synth.root)
    if not (root / synth.marker).exists():
        _build(synth.builder, f"the synthetic {cfg.task.name} set in {root}", root)
    OmegaConf.update(cfg, "data.root", str(root), force_add=True)
