"""What ``train.py`` and ``eval.py`` do, from a composed Hydra config to ``metrics.json``.

:func:`train` reads top to bottom as the run (nothing long starts before the checks pass):
1. setup: validate the config (:mod:`cola.validation`; its one ``instantiate(cfg.peft)``, a
   :class:`cola.peft.PeftSpec`, is what the encoder, the task and the saved files use) and the run folder, resolve the
   dataset (generate the task's synthetic set on first use when ``data.root`` is null), seed, build the towers +
   adapters (:class:`cola.models.DualEncoder`) and the task module; check a checkpoint to resume from;
2. instantiate the ``logger``, ``callbacks`` and ``trainer`` config groups (``_target_`` entries);
3. fit (resuming from ``ckpt_path``; the resume, SLURM and non-finite logic is in :mod:`cola.callbacks`);
4. validate and test with the selected checkpoint (the tail :func:`evaluate` shares);
5. write ``adapter.safetensors`` (adapters + heads) and ``metrics.json`` atomically (:mod:`cola.runio`), close the
   loggers (``wandb.finish()``) whatever happened, print the metrics table.
"""

from __future__ import annotations

import logging
import signal
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cola.resolvers  # noqa: F401  (registers ${cola.minilm:})
from cola.peft import PeftSpec, load_adapters, save_adapters
from cola.prepare import ensure_assets, resolve_data_root
from cola.runio import (  # noqa: F401  (job_config, job_config_yaml: also used through cola.harness)
    attach_file_log,
    check_checkpoint,
    check_resume,
    find_run_config,
    finish_wandb,
    flat_metrics,
    job_config,
    job_config_yaml,
    print_metrics_table,
    quiet_third_party,
    resolve_ckpt_path,
    single_log_lines,
    start_run_folder,
    write_metrics,
)
from cola.validation import (
    SetupError,
    parse_peft,
    task_streams,
    validate_adapter_targets,
    validate_config,
    validate_run_dir,
)

if TYPE_CHECKING:  # lightning is imported where it is used, so that config errors show before its slow import
    import lightning as L

log = logging.getLogger(__name__)

HEAD_PREFIXES = ("head.", "heads.")
MASK_METRICS = ("miou", "oiou")  # reported from the best-mask checkpoint under task.monitor_mask


# ---------------------------------------------------------------------------------------------- building
def build_encoder(cfg: DictConfig, peft: PeftSpec | None = None):
    """Builds the task's towers (:func:`task_streams`) from ``model.<stream>`` and wraps them, keyed by stream, in a
    :class:`cola.models.DualEncoder` (two or more towers in lockstep) with the parsed ``peft`` node (``None``: parse
    ``cfg.peft`` here, :func:`cola.validation.parse_peft`)."""
    from cola.models import DualEncoder

    peft = parse_peft(cfg) if peft is None else peft
    towers = {s: instantiate(cfg.model[s]) for s in task_streams(cfg)}
    targets = {s: list(cfg.model.targets[t.family]) for s, t in towers.items()}
    splits = {s: dict(cfg.model.out_splits.get(t.family) or {}) for s, t in towers.items()}
    for stream, tower in towers.items():
        validate_adapter_targets(tower, targets=targets[stream], out_splits=splits[stream], peft=peft, stream=stream)
    return DualEncoder(
        towers,
        peft=peft,
        targets=targets,
        out_splits=splits,
        gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),
    )


def build_module(cfg: DictConfig, encoder, datamodule):
    """The task module (``task.module``) with the run's optimisation: ``optim.optimizer_cfg`` and
    ``optim.scheduler_cfg`` instantiated as partials the task fills (:mod:`cola.optim`), and the ``optim`` knobs
    the task reads itself (:data:`cola.optim.TASK_KEYS`); the other knobs reach the partials by interpolation. The
    task asks the encoder for the parsed ``peft`` node (:attr:`cola.tasks.base.DualStreamTask.peft`)."""
    from cola.optim import TASK_KEYS, check_options

    optim = OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else {}
    check_options(optim)
    partials = {k: instantiate(optim[f"{k}_cfg"]) for k in ("optimizer", "scheduler") if optim.get(f"{k}_cfg")}
    return instantiate(
        cfg.task.module,
        encoder=encoder,
        val_split=datamodule.val_split,
        test_splits=list(datamodule.test_splits),
        **{k: v for k, v in optim.items() if k in TASK_KEYS},
        **partials,
        _convert_="all",
    )


def _entries(group: DictConfig) -> list[dict[str, Any]]:
    """The resolved entries of a ``callbacks``/``logger`` node that have a ``_target_``, in order.

    An entry set to null has none, nor has a settings node (``callbacks.model_checkpoint``); an entry whose
    ``enabled`` key is null, false, 0 or empty is skipped (a callback that follows another setting, e.g. the
    best-mask checkpoint follows ``task.monitor_mask``).
    """
    entries = []
    for name in group:
        node = group[name]
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        entry = OmegaConf.to_container(node, resolve=True)
        if "enabled" in entry and not entry.pop("enabled"):
            continue
        entries.append(entry)
    return entries


def instantiate_loggers(cfg: DictConfig) -> list:
    """The ``logger`` group's loggers; one with a ``config: null`` entry (W&B) gets the resolved job config."""
    loggers = []
    for entry in _entries(cfg.logger):
        if "config" in entry and entry["config"] is None:
            entry["config"] = job_config(cfg)
        # the job config's own _target_ entries stay data, passed as plain containers
        loggers.append(instantiate(entry, _recursive_=False, _convert_="all"))
    return loggers


def instantiate_callbacks(cfg: DictConfig) -> list:
    """The ``callbacks`` group's callbacks (configs/callbacks/default.yaml), in order."""
    return [instantiate(entry) for entry in _entries(cfg.callbacks)]


def job_callbacks(record) -> list:
    """The callback that keeps ``job.json`` up to date with the step reached (none on ranks other than zero)."""
    if record is None:
        return []
    from cola.callbacks.progress import JobProgress

    return [JobProgress(record)]


def log_summary(loggers: list, metrics: dict[str, Any]) -> None:
    """Every ``metrics.json`` value (scores, floors, ``params/trainable`` ...) as a W&B summary value of the same
    name, so that W&B reports and ``compare_runs.py --wandb-project`` read what the run folder holds."""
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list) -> L.Trainer:
    """The ``trainer`` group's Lightning Trainer (null values are passed as ``None``, Lightning's meaning), with
    atomic checkpoint writes and, in a SLURM batch job, save + requeue on SIGUSR1 (:mod:`cola.callbacks.slurm`)."""
    from cola.callbacks.checkpoints import AtomicCheckpointIO
    from cola.callbacks.slurm import requeue_plugins

    return instantiate(
        OmegaConf.to_container(cfg.trainer, resolve=True),
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO(), *requeue_plugins()],
    )


# ---------------------------------------------------------------------------------------------- helpers
def _mask_checkpoint(cfg: DictConfig, trainer) -> str | None:
    """The best-mask checkpoint written under ``task.monitor_mask``, if that is set and the file exists."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    if not cfg.task.get("monitor_mask") or trainer.fast_dev_run:
        return None
    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor == cfg.task.monitor_mask and cb.best_model_path:
            return cb.best_model_path if Path(cb.best_model_path).is_file() else None
    return None


def reference_metrics(datamodule) -> dict[str, float]:
    """Scores of trivial predictors on the evaluated splits, computed from the data: the floors a model must clear.

    ``datamodule.floor_metrics()`` (grounding: ``<split>/acc@0.5_fixed_box``, one fixed box; AVE:
    ``<split>/acc_majority``, the training majority class; AVS: ``<split>/miou_fixed_mask`` and
    ``<split>/fscore_fixed_mask``, the thresholded mean training mask; :class:`cola.data.base.CoLADataModule`).
    A floor that cannot be computed is a warning: it never costs the run its ``metrics.json``.
    """
    try:
        return dict(datamodule.floor_metrics())
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("the floor metrics could not be computed (%s: %s); metrics.json has none", type(e).__name__, e)
        return {}


# ---------------------------------------------------------------------------------------------- entry points
def setup(cfg: DictConfig, run_dir: Path, *, resuming: bool):
    """Everything before training; any bad input surfaces here as a :class:`SetupError`."""
    try:
        peft = validate_config(cfg)  # the one parse of cfg.peft, handed down
        validate_run_dir(run_dir, resuming=resuming)
        resolve_data_root(cfg)
        root = Path(str(cfg.data.root))
        if root.exists() and not root.is_dir():
            raise SetupError(
                f"data.root={str(root)!r} is a file, not a folder; data.root is the dataset's folder in its standard "
                "layout (README 'Datasets')"
            )
        ensure_assets(cfg)
        datamodule = instantiate(cfg.data, _convert_="all")
        from cola.data.base import CoLADataModule

        if not isinstance(datamodule, CoLADataModule):  # the contract the rest of the run relies on
            raise SetupError(
                f"data._target_={cfg.data.get('_target_')!r} built a {type(datamodule).__name__}; it must be a "
                "cola.data.base.CoLADataModule subclass (docs/data.md)"
            )
        datamodule.validate()
        import lightning as L

        L.seed_everything(cfg.seed, workers=True)
        encoder = build_encoder(cfg, peft)
        module = build_module(cfg, encoder, datamodule)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise SetupError(str(e)) from e
    except InstantiationException as e:  # a constructor's own error, wrapped by hydra: report that error
        raise SetupError(str(e.__cause__ or e)) from e
    return datamodule, module


def fit(trainer: L.Trainer, module, datamodule, ckpt: str | None, run_dir: Path) -> None:
    """``trainer.fit``, resuming from ``ckpt``; a run stopped by SIGTERM (its ``last.ckpt`` saved by
    :class:`cola.callbacks.resume.SaveOnSigterm`) exits with code 143 after saying how to resume it."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    try:
        with warnings.catch_warnings():
            if ckpt is not None:  # a resumed run reuses its folders on purpose
                for used in ("Experiment logs directory", "Checkpoint directory"):
                    warnings.filterwarnings("ignore", message=f"{used} .* exists and is not empty")
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    except SIGTERMException:
        log.warning(
            "training stopped by SIGTERM at global step %d; its state is in %s. Resume with the same overrides "
            "and: hydra.run.dir=%s ckpt_path=last",
            trainer.global_step,
            run_dir / "checkpoints" / "last.ckpt",
            run_dir,
        )
        raise SystemExit(128 + signal.SIGTERM) from None
    if getattr(module, "skipped_batches", 0):
        log.warning(
            "%d training batches / optimiser steps were skipped for non-finite losses or gradients",
            module.skipped_batches,
        )


def validate_and_test(trainer: L.Trainer, module, datamodule, ckpt: str | None) -> dict[str, float]:
    """The flat val and test metrics of checkpoint ``ckpt`` (``None``: the module as it is): the tail that
    :func:`train` and :func:`evaluate` share."""
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    results += trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    return flat_metrics(results)


def selected_metrics(cfg: DictConfig, trainer: L.Trainer, module, datamodule) -> tuple[dict[str, float], str | None]:
    """Val and test metrics of the selected checkpoint (``best.ckpt``; under ``task.monitor_mask`` the mask
    metrics come from ``best_mask.ckpt``, as the official grounding code reports them); and that checkpoint."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    best = best if best and Path(best).is_file() and not trainer.fast_dev_run else None
    best_mask = _mask_checkpoint(cfg, trainer)  # before testing: loading best.ckpt restores callback states
    metrics = validate_and_test(trainer, module, datamodule, best)
    if best_mask is not None:
        mask = validate_and_test(trainer, module, datamodule, best_mask)
        metrics.update({k: v for k, v in mask.items() if k.rpartition("/")[2] in MASK_METRICS})
    return metrics, best


def run_summary(module, datamodule) -> dict[str, Any]:
    """What ``metrics.json`` holds besides the scores: the floors of the evaluated splits, the parameter counts (and
    an adaptive intra variant's budget: ``params/intra_ranks_*``, ``params/trainable_at_*_budget``), and the number of
    unreadable samples skipped (when any)."""
    metrics: dict[str, Any] = dict(reference_metrics(datamodule))
    counts = module.parameter_counts()
    metrics.update({"params/trainable": counts["trainable"], "params/total": counts["total"]})
    metrics.update(module.budget_summary())  # an adaptive intra variant's ranks and parameters (AdaLoRA); else none
    skipped = datamodule.num_skipped
    if skipped:
        log.warning("%d samples were skipped because their files could not be read (warnings above)", skipped)
        metrics["data/skipped_samples"] = skipped
    return metrics


def train(cfg: DictConfig, run_dir: Path, *, job: dict[str, Any] | None = None) -> dict[str, float]:
    """Trains and tests one configuration (``train.py``); returns the flat metrics written to ``metrics.json``.

    Args:
        cfg: the composed config.
        run_dir: the run folder.
        job: what ``job.json`` records of the job besides its attempts (:class:`cola.sweep.JobRecord`: a sweep
            job's key, overrides and number).
    """
    from cola.sweep import job_running

    t0 = time.time()
    single_log_lines()
    quiet_third_party(not cfg.get("third_party_logs", False))
    OmegaConf.update(cfg, "paths.run_dir", str(run_dir), force_add=True)  # where callbacks and loggers write
    try:
        ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
        datamodule, module = setup(cfg, run_dir, resuming=ckpt is not None)
        if ckpt is not None:  # every input checked before the first write into the run folder
            check_resume(cfg, run_dir, ckpt, module)
        start_run_folder(cfg, run_dir, resumed=ckpt is not None)
        with job_running(
            run_dir, job, resumed_from=ckpt, started=t0
        ) as record:  # job.json: attempts, heartbeat, progress
            callbacks = instantiate_callbacks(cfg) + job_callbacks(record)
            trainer = build_trainer(cfg, run_dir, instantiate_loggers(cfg), callbacks)
            fit(trainer, module, datamodule, ckpt, run_dir)
            t_train = time.time() - t0
            metrics, best = selected_metrics(cfg, trainer, module, datamodule)
            metrics.update(run_summary(module, datamodule))
            metrics.update({"time/train_s": round(t_train, 2), "time/total_s": round(time.time() - t0, 2)})
            if getattr(module, "skipped_batches", 0):
                metrics["train/skipped_batches"] = int(module.skipped_batches)
            if trainer.is_global_zero:
                save_adapters(
                    run_dir / "adapter.safetensors",
                    module,
                    config=module.peft_node(),
                    extra_prefixes=module.head_prefixes(),
                    metadata={"task": str(cfg.task.name), "best_checkpoint": str(best)},
                )
                write_metrics(run_dir, metrics)
                log_summary(trainer.loggers, metrics)
    finally:
        finish_wandb()
    if trainer.is_global_zero:  # after W&B's own closing lines: the table and the run folder end the output
        print_metrics_table(metrics, f"{cfg.task.name} | {cfg.peft.method}", run_dir)
    return metrics


def load_run(path: str | Path, run_dir: Path, overrides: list[str] = ()) -> tuple[DictConfig, Any, Any, str | None]:
    """Rebuilds a saved run: its config (with dotted ``overrides`` on top), DataModule and task module.

    Args:
        path: a run folder, its ``adapter.safetensors`` or one of its ``checkpoints/*.ckpt``.
        run_dir: the folder of the new job (evaluation outputs).
        overrides: ``key=value`` overrides applied to the run's config (e.g. ``data.root=...``).

    Returns:
        (config, datamodule, module, ckpt) — the adapter file is already loaded into the module; ``ckpt`` is
        the Lightning checkpoint to hand to ``trainer.validate/test`` when ``path`` is one, else ``None``.
    """
    ckpt = Path(str(path))
    if not ckpt.exists():
        raise SetupError(f"ckpt_path={str(ckpt)!r} does not exist")
    run_cfg = OmegaConf.load(find_run_config(ckpt))
    merged = OmegaConf.merge(run_cfg, OmegaConf.from_dotlist(list(overrides)))
    OmegaConf.update(merged, "logger", {}, merge=False, force_add=True)  # evaluation logs nothing
    OmegaConf.update(merged, "paths.run_dir", str(run_dir), force_add=True)
    datamodule, module = setup(merged, run_dir, resuming=True)
    adapter = ckpt / "adapter.safetensors" if ckpt.is_dir() else ckpt
    if adapter.suffix == ".safetensors":
        try:
            load_adapters(adapter, module, config=module.peft_node(), extra_prefixes=module.head_prefixes())
        except (ValueError, FileNotFoundError) as e:
            raise SetupError(f"ckpt_path={str(path)!r}: {e}") from e
        except Exception as e:  # noqa: BLE001 - safetensors' own errors (a file that is not safetensors)
            raise SetupError(f"ckpt_path={str(path)!r}: {adapter} is not an adapter file train.py wrote ({e})") from e
        return merged, datamodule, module, None
    check_checkpoint(adapter, module)  # weights_only, peft config and tensors, before Lightning loads it
    return merged, datamodule, module, str(adapter)


def evaluate(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, float]:
    """Evaluates a saved run on its val and test splits (``eval.py``)."""
    from cola.io import atomic_write_text

    single_log_lines()
    quiet_third_party(not cfg.get("third_party_logs", False))
    try:
        keep = [o for o in overrides if not o.startswith(("ckpt_path=", "hydra.", "task=", "model=", "peft="))]
        merged, datamodule, module, ckpt = load_run(cfg.ckpt_path, run_dir, keep)
        attach_file_log(run_dir, name="eval.log")
        # the evaluated configuration: the run's config with the overrides, and what was evaluated
        OmegaConf.update(merged, "eval", {"ckpt_path": str(cfg.ckpt_path), "overrides": keep}, force_add=True)
        atomic_write_text(run_dir / "config.yaml", job_config_yaml(merged))
        trainer = build_trainer(merged, run_dir, [], [])
        metrics = validate_and_test(trainer, module, datamodule, ckpt)
        metrics.update(run_summary(module, datamodule))
        write_metrics(run_dir, metrics)
    finally:
        finish_wandb()
    print_metrics_table(metrics, f"eval of {cfg.ckpt_path}", run_dir)
    return metrics


def train_job(cfg: DictConfig, hydra_cfg: DictConfig) -> dict[str, Any]:
    """``train.py``'s job: a single run trains in its folder; a multirun job first decides, from its sweep folder,
    whether it is skipped, resumed or run (:mod:`cola.sweep`), then trains in its job folder.

    Args:
        cfg: the job's config.
        hydra_cfg: ``HydraConfig.get()``.

    Returns:
        The run's metrics (a skipped job's ``metrics.json``).
    """
    from hydra.types import RunMode

    from cola.sweep import (
        apply_plan,
        describe,
        new_folder_name,
        override_key,
        plan_job,
        rank_zero,
        read_definition,
    )

    job_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    if hydra_cfg.mode != RunMode.MULTIRUN:
        if cfg.get("resume_sweep"):
            raise SetupError(
                f"resume_sweep={cfg.resume_sweep} re-runs a sweep: add -m (python train.py -m <the sweep's overrides> "
                "resume_sweep=<its folder>)"
            )
        return train(cfg, job_dir, job={"overrides": overrides})
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    num = int(hydra_cfg.job.num)
    definition = read_definition(sweep_dir)
    swept = definition.swept if definition is not None else [override_key(o) for o in overrides]
    plan = plan_job(cfg, sweep_dir=sweep_dir, job_dir=job_dir, overrides=overrides, num=num, swept=swept)
    run_dir = apply_plan(plan, sweep_dir=sweep_dir, job_dir=job_dir, num=num) if rank_zero() else plan.run_dir
    run_dir = run_dir or sweep_dir / new_folder_name(num, plan.key)
    if not (plan.action == "run" and plan.reason == "not started" and run_dir == job_dir):  # a fresh job: no line
        log.info(describe(plan, run_dir, num))
    if plan.action == "skip":
        return dict(plan.metrics or {})
    if plan.action == "resume":
        OmegaConf.update(cfg, "ckpt_path", str(plan.ckpt), force_add=True)
    return train(cfg, run_dir, job={"key": plan.key, "overrides": overrides, "num": num})
