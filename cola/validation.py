"""Checks that run before any data loading or model building; each failure is one readable paragraph."""

from __future__ import annotations

import netrc
import os
import re
from collections.abc import Mapping
from pathlib import Path

from omegaconf import DictConfig

from cola.peft import PeftSpec, build_peft
from cola.peft.config import STREAMS


class SetupError(RuntimeError):
    """A bad configuration, dataset or run folder, found before training; train.py prints it without a traceback."""


def task_streams(cfg: DictConfig) -> list[str]:
    """The task's towers in lockstep order: ``task.streams`` (AVQA: vision, audio, text), else vision and the
    task's second tower ``task.modality``."""
    streams = cfg.task.get("streams")
    return list(streams) if streams else ["vision", cfg.task.get("modality")]


def parse_peft(cfg: DictConfig) -> PeftSpec:
    """``hydra.utils.instantiate(cfg.peft)``: the run's one parse of its ``peft`` node (``_target_:
    cola.peft.build_peft``), a :class:`cola.peft.PeftSpec` that the checks, the encoder, the task and its checkpoints
    share. A node saved before it had a ``_target_`` is parsed by :func:`cola.peft.build_peft` all the same.

    Raises:
        SetupError: a value that does not resolve (``rank=-3``) or that the method's config rejects, named.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import InterpolationResolutionError

    try:
        spec = instantiate(cfg.peft, _convert_="all")
        return spec if isinstance(spec, PeftSpec) else build_peft(**spec)
    except InterpolationResolutionError as e:  # e.g. rank=-3: the resolver's own message names the key
        first = str(e.__cause__ or e).split("\n")[0]
        raise SetupError(re.sub(r"^\w+ raised while resolving interpolation: ", "", first)) from e
    except (ValueError, InstantiationException) as e:  # the parse's own error, wrapped by hydra: report that
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        if isinstance(cause, InterpolationResolutionError):
            first = str(cause.__cause__ or cause).split("\n")[0]
            raise SetupError(re.sub(r"^\w+ raised while resolving interpolation: ", "", first)) from e
        raise SetupError(str(cause) if str(cause).startswith("peft") else f"peft: {cause}") from e


MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def models_with(streams: list[str], folder: Path = MODEL_CONFIGS) -> list[str]:
    """The ``model=`` options (files of ``configs/model/``) that define a tower for every stream in ``streams``."""
    import yaml

    names = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name.startswith("_"):
            continue
        node = yaml.safe_load(path.read_text()) or {}
        if all(node.get(s) is not None for s in streams):
            names.append(path.stem)
    return names


def validate_config(cfg: DictConfig) -> PeftSpec:
    """Validates the composed config: peft fields, task/model pairing, logger credentials. Returns the parsed ``peft``
    node (:func:`parse_peft`), which the run builds from."""
    spec = parse_peft(cfg)
    needed = task_streams(cfg)
    missing = [s for s in needed if s not in cfg.model or cfg.model.get(s) is None]
    if missing:
        towers = [k for k in STREAMS if cfg.model.get(k) is not None]
        fits = " or ".join(f"model={m}" for m in models_with(needed)) or "none of configs/model/ has them"
        raise SetupError(
            f"task {cfg.task.name} runs the towers {needed}, but model {cfg.model.get('name')} has towers {towers}; "
            f"pick a model with a {' and a '.join(missing)} tower ({fits})"
        )
    pooling = getattr(spec.config, "condition_pooling", None)
    pooled = pooling.values() if isinstance(pooling, Mapping) else [pooling]
    if "mean_with_padding" in pooled and cfg.get("data", {}).get("pad_to") == "longest":
        raise SetupError(
            f"peft.condition_pooling={pooling} averages the padding positions too, so it depends on how far "
            "expressions are padded; set data.pad_to=max_length (pad every expression to data.max_query_len, as the "
            "official code) instead of data.pad_to=longest"
        )
    _validate_options(cfg)
    wb = cfg.logger.get("wandb")
    if wb and not wb.get("offline", True) and not _wandb_has_credentials():
        raise SetupError(
            "logger.wandb.offline=false but no W&B credentials were found (WANDB_API_KEY, ~/.netrc); run "
            "`wandb login`, or keep the default offline mode and `wandb sync` the run later"
        )
    return spec


def _validate_options(cfg: DictConfig) -> None:
    """Choices that are otherwise only checked where they are used, after the towers are built: the grounding head,
    the selection on ties, the audio channel."""
    from omegaconf import OmegaConf

    from cola.callbacks.checkpoints import check_select_ties
    from cola.data.audio import check_audio_channel

    checks = []
    head = OmegaConf.select(cfg, "task.head")
    if head is not None and OmegaConf.select(cfg, "task.family") == "grounding":
        from cola.tasks.grounding import check_head_spec

        checks.append(lambda: check_head_spec(OmegaConf.to_container(head, resolve=True)))
    ties = OmegaConf.select(cfg, "callbacks.model_checkpoint.select_ties")
    if ties is not None:
        checks.append(lambda: check_select_ties(ties))
    channel = OmegaConf.select(cfg, "data.audio_channel")
    if channel is not None:
        checks.append(lambda: check_audio_channel(channel))
    for check in checks:
        try:
            check()
        except ValueError as e:
            raise SetupError(str(e)) from e


def validate_adapter_targets(
    tower, *, targets: list[str], out_splits: dict[str, int], peft: PeftSpec, stream: str
) -> None:
    """Checks, on a built tower and before any adapter is injected, that every target names a linear layer and
    that the rank fits each adapted layer: a rank-r update of a layer needs r <= min(d_in, d_out per slice).

    Args:
        tower: the :class:`cola.models.Tower` (an ``nn.Module``).
        targets: ``model.targets[family]`` (name suffixes).
        out_splits: fused layers (``{"attn.qkv": 3}``): their output is split before comparing.
        peft: the parsed ``peft`` node (:func:`parse_peft`).
        stream: the stream name (``vision``, ``text``, ``audio``), for the message.

    Raises:
        SetupError: a target matches no ``nn.Linear`` (naming the closest module names) or the rank is too large.
    """
    from cola.peft import find_targets

    if not peft.method.injects:
        return
    try:
        found = find_targets(tower, list(targets))
    except ValueError as e:
        raise SetupError(f"model.targets.{tower.family} (stream {stream}): {e}") from e
    rank = peft.config.rank
    too_narrow = {}
    for name, (target, linear) in found.items():
        width = min(linear.in_features, linear.out_features // int(out_splits.get(target, 1)))
        if rank > width:
            too_narrow[name] = width
    if too_narrow:
        name, width = next(iter(too_narrow.items()))
        raise SetupError(
            f"peft.rank={rank} is larger than the width of {len(too_narrow)} adapted layer(s) of the "
            f"{tower.family} tower (stream {stream}), e.g. {name} (min(d_in, d_out) = {width}); a rank-r update needs "
            f"r <= {min(too_narrow.values())} here: choose a smaller rank (rank=4|8|16|32|64) or fewer/other "
            f"model.targets.{tower.family}"
        )


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return auth is not None


def validate_run_dir(run_dir: Path, *, resuming: bool) -> None:
    """A run never writes into another run's folder: refuse a used folder unless resuming from it."""
    used = [p.name for p in (run_dir / "checkpoints", run_dir / "metrics.json") if p.exists()]
    if used and not resuming:
        raise SetupError(
            f"run folder {run_dir} already holds {used} from another run; pass ckpt_path=last to resume it, or "
            "choose a new hydra.run.dir"
        )
