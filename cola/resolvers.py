"""Hydra/OmegaConf plumbing shared by train.py, eval.py and the tests.

- ``${cola.minilm:}``: the folder of the pip-shipped MiniLM BERT (the tiny model's text tower and tokenizer).
- ``${cola.audio_frames:AUDIO_INPUT,TARGET_FRAMES}``: the AST ``max_length`` of a data setting
  (:func:`cola.data.audio.audio_frames`): 1024 with ``pad`` (the pretrained grid), ``TARGET_FRAMES`` with
  ``interpolate``; ``configs/model/*.yaml`` pass ``data.audio_input`` and ``data.audio_target_frames``.
- ``${cola.targets:FAMILY,STAGES}`` / ``${cola.out_splits:FAMILY}``: a backbone family's adapter targets in the
  given block stages and its fused layers (:func:`cola.models.family_targets`, :func:`cola.models.family_out_splits`);
  ``configs/model/*.yaml`` pass ``model.target_stages``, which ``configs/targets/*.yaml`` set.
- ``${cola.repo_dir:}``: the folder of this checkout (``paths.repo_dir``; its ``assets/`` holds small files the
  repo's scripts made, e.g. the tiny ViT's weights).
- ``${cola.run_task:${ckpt_path},DEFAULT}``: the task of the run an ``eval.py ckpt_path`` belongs to (its
  ``config.yaml``), so evaluations land in ``outputs/<that task>/evals/``.
- ``${cola.rank:${rank},DEFAULT}`` / ``${cola.alpha:${rank},DEFAULT}``: the top-level ``rank=R`` (any positive
  integer) sets ``peft.rank = R`` and ``peft.alpha = R / 2`` in every ``configs/peft/*.yaml``; ``rank: null`` keeps
  the method's defaults. Resolved when the config is, so it wins over any experiment file's merge order, and a
  sweep is a plain ``-m rank=4,8,16``.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def _minilm() -> str:
    from cola.models.encoders import minilm_path

    return minilm_path()


def _audio_frames(audio_input: str, target_frames: int) -> int:
    from cola.data.audio import audio_frames

    return audio_frames(str(audio_input), int(target_frames))


# The two below return config nodes, not a list / dict: OmegaConf.resolve (``--cfg job --resolve``, the saved
# config.yaml) can only write a container back in place of an interpolation when it gets one.
def _targets(family: str, stages: Any) -> ListConfig:
    from cola.models.targets import family_targets

    stages = OmegaConf.to_object(stages) if isinstance(stages, ListConfig) else stages
    return OmegaConf.create(family_targets(str(family), stages))


def _out_splits(family: str) -> DictConfig:
    from cola.models.targets import family_out_splits

    return OmegaConf.create(family_out_splits(str(family)))


def _check_rank(rank: Any) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(
            f"rank must be a positive integer (rank=R sets peft.rank = R and peft.alpha = R / 2), got {rank!r}"
        )
    return rank


def _rank(rank: Any, default: Any) -> Any:
    return default if rank is None else _check_rank(rank)


def _alpha(rank: Any, default: Any) -> Any:
    if rank is None:
        return default
    rank = _check_rank(rank)
    return rank // 2 if rank % 2 == 0 else rank / 2


def _run_task(ckpt_path: Any, default: str) -> str:
    """The task of the run that ``ckpt_path`` (a run folder, its adapter file or a checkpoint) belongs to."""
    from pathlib import Path

    path = Path(str(ckpt_path))
    for parent in [path, *path.parents][:3]:
        cfg = parent / "config.yaml"
        if cfg.is_file():
            try:
                return str(OmegaConf.load(cfg).task.name)
            except Exception:  # noqa: BLE001 - an unreadable config is reported by eval.py itself
                return default
    return default


def _either(value: Any, default: Any) -> Any:
    """``value`` unless it is null (``hydra.sweep.dir``: ``resume_sweep`` when given, else a new folder)."""
    return default if value is None else value


def _repo_dir() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])


def register() -> None:
    """Registers the resolvers (idempotent)."""
    if not OmegaConf.has_resolver("cola.minilm"):
        OmegaConf.register_new_resolver("cola.minilm", _minilm, use_cache=True)
    for name, fn in (
        ("cola.rank", _rank),
        ("cola.alpha", _alpha),
        ("cola.run_task", _run_task),
        ("cola.repo_dir", _repo_dir),
        ("cola.targets", _targets),
        ("cola.out_splits", _out_splits),
        ("cola.either", _either),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
    if not OmegaConf.has_resolver("cola.audio_frames"):
        OmegaConf.register_new_resolver("cola.audio_frames", _audio_frames)


register()
