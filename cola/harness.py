"""``run(cfg)``: what ``train.py`` and ``eval.py`` do, from a composed Hydra config to ``metrics.json``.

Order of work (nothing long starts before the checks pass):
1. validate the config (:mod:`cola.validation`) and the run folder;
2. resolve the dataset (generate the task's synthetic set on first use when ``data.root`` is null) and let the
   DataModule check its layout;
3. seed, build the towers + adapters (:class:`cola.models.DualEncoder`) and the task module;
4. fit (resuming from ``ckpt_path``), re-validate and test with the selected checkpoint;
5. write ``adapter.safetensors`` (adapters + heads) and ``metrics.json`` atomically, print the metrics table;
6. close the loggers (``wandb.finish()``) whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import cola.resolvers  # noqa: F401  (registers ${cola.minilm:})
from cola.peft import load_adapters, save_adapters
from cola.validation import SetupError, validate_adapter_targets, validate_config, validate_run_dir

if TYPE_CHECKING:  # lightning is imported where it is used, so that config errors show before its slow import
    import lightning as L

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD_PREFIXES = ("head.", "heads.")
NOT_SPLITS = ("params", "time", "data", "train")
MASK_METRICS = (
    "miou",
    "oiou",
)  # reported from the best-mask checkpoint under task.monitor_mask  # metrics.json key prefixes that are not evaluation splits


# ---------------------------------------------------------------------------------------------- building
def peft_dict(cfg: DictConfig) -> dict[str, Any]:
    """The resolved ``peft`` node as a plain dict (what the DualEncoder and checkpoints see)."""
    return OmegaConf.to_container(cfg.peft, resolve=True)  # type: ignore[return-value]


def _run_commands(commands, what: str, **fmt: Any) -> None:
    """Runs repo scripts (``[script, *args]`` with ``{root}``/``{path}`` filled) in this process, as
    ``python script args`` would (``runpy``): no second interpreter re-importing torch and Lightning, which made
    up most of a fresh ``debug=fast`` run's data generation."""
    import runpy

    for command in commands:
        script = REPO_ROOT / command[0]
        args = [str(a).format(**fmt) for a in command[1:]]
        log.info("building %s: python %s %s", what, command[0], " ".join(args))
        argv = sys.argv
        sys.argv = [str(script), *args]
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as e:  # argparse errors and explicit exits
            if e.code not in (None, 0):
                raise SetupError(f"building {what} failed (exit code {e.code}, output above): {command[0]}") from None
        finally:
            sys.argv = argv


def ensure_assets(cfg: DictConfig) -> None:
    """Builds the model's missing cached files (e.g. the tiny vision tower's pretrained weights)."""
    for asset in cfg.model.get("assets") or []:
        if not Path(asset.path).is_file():
            _run_commands([asset.command], f"model asset {asset.path}", path=asset.path)


def resolve_data_root(cfg: DictConfig) -> None:
    """``data.root: null`` means the task's synthetic set: generate it once (deterministic) and point at it."""
    if cfg.data.get("root") is not None:
        return
    synth = cfg.task.get("synthetic")
    if synth is None:
        raise SetupError(f"task {cfg.task.name} needs data.root=PATH (no synthetic set is defined for it)")
    root = Path(synth.root)
    if not (root / synth.marker).exists():
        _run_commands(synth.commands, f"the synthetic {cfg.task.name} set in {root}", root=root)
    OmegaConf.update(cfg, "data.root", str(root), force_add=True)


def build_encoder(cfg: DictConfig):
    """Builds both towers from ``model.*`` and wraps them in a :class:`cola.models.DualEncoder`."""
    from cola.models import DualEncoder

    second = cfg.task.modality
    tower_a = instantiate(cfg.model.vision)
    tower_b = instantiate(cfg.model[second])
    targets = {s: list(cfg.model.targets[t.family]) for s, t in (("a", tower_a), ("b", tower_b))}
    splits = {s: dict(cfg.model.out_splits.get(t.family) or {}) for s, t in (("a", tower_a), ("b", tower_b))}
    for stream, tower in (("a", tower_a), ("b", tower_b)):
        validate_adapter_targets(
            tower, targets=targets[stream], out_splits=splits[stream], peft=peft_dict(cfg), stream=stream
        )
    return DualEncoder(
        tower_a,
        tower_b,
        peft=peft_dict(cfg),
        targets_a=targets["a"],
        targets_b=targets["b"],
        out_splits_a=splits["a"],
        out_splits_b=splits["b"],
        layers=cfg.peft.get("layers"),
        layer_map=cfg.peft.get("layer_map"),
        anchor="b" if second == "text" else None,
        gradient_checkpointing=bool(cfg.model.get("gradient_checkpointing", False)),
    )


def build_module(cfg: DictConfig, encoder, datamodule):
    optim = OmegaConf.to_container(cfg.optim, resolve=True) if cfg.get("optim") else {}
    return instantiate(
        cfg.task.module,
        encoder=encoder,
        val_split=getattr(datamodule, "val_split", "val"),
        test_splits=list(datamodule.test_splits),
        peft_config=peft_dict(cfg),
        **optim,
        _convert_="all",
    )


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of a run folder: read from ``wandb_id.txt``, or made and written there on first use."""
    from cola.io import atomic_write_text

    path = run_dir / "wandb_id.txt"
    if path.is_file():
        return path.read_text().strip()
    import secrets
    import string

    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))  # W&B's id shape
    atomic_write_text(path, run_id + "\n")
    return run_id


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    loggers: list = []
    if cfg.logger.get("csv"):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    wb = cfg.logger.get("wandb")
    if wb:
        tags = [
            f"peft:{cfg.peft.method}",
            f"rank:{cfg.peft.rank}",
            f"sharing:{cfg.peft.get('sharing', 'na')}",
            f"propagation:{cfg.peft.get('propagation', 'na')}",
            f"seed:{cfg.seed}",
            *wb.get("tags", []),
            *cfg.get("tags", []),
        ]
        loggers.append(
            WandbLogger(
                id=wandb_run_id(run_dir),  # kept in the run folder: a resumed run continues the same W&B run
                resume="allow",
                project=wb.project,
                entity=wb.get("entity"),
                group=wb.get("group"),
                job_type=wb.get("job_type"),
                name=wb.get("name"),
                offline=bool(wb.offline),
                save_dir=str(run_dir),
                log_model=bool(wb.get("log_model", False)),
                tags=tags,
                config=job_config(cfg),
            )
        )
    return loggers


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list:
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichModelSummary

    from cola.io import SaveOnSigterm

    cb = cfg.callbacks
    mc = cb.model_checkpoint
    ckpt_dir = str(run_dir / "checkpoints")
    callbacks: list = [
        # best.ckpt (monitor) and last.ckpt at every validation; the first ModelCheckpoint is
        # trainer.checkpoint_callback, the best-checkpoint tracker saved in every checkpoint.
        # No version counter: last.ckpt and best.ckpt are overwritten (atomically), never last-v1.ckpt
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best",
            monitor=mc.monitor,
            mode=mc.mode,
            save_top_k=mc.save_top_k,
            save_last=mc.save_last,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        SaveOnSigterm(run_dir / "checkpoints" / "last.ckpt"),  # cola.io
    ]
    mask_monitor = cfg.task.get("monitor_mask")
    if mask_monitor:
        # official grounding keeps a second best checkpoint by mask mIoU; its mask metrics are reported from it
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best_mask",
                monitor=mask_monitor,
                mode=mc.mode,
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    if mc.get("every_n_train_steps"):
        # last.ckpt every N optimiser steps, also before the first validation: a ModelCheckpoint with a monitor
        # defers step-based saves until its metric exists, so this one has none and keeps no top-k
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                monitor=None,
                save_top_k=0,
                save_last=True,
                every_n_train_steps=int(mc.every_n_train_steps),
                enable_version_counter=False,
            )
        )
    if cb.early_stopping.get("patience"):
        callbacks.append(EarlyStopping(monitor=mc.monitor, mode=mc.mode, patience=cb.early_stopping.patience))
    if cb.get("lr_monitor") and (cfg.logger.get("csv") or cfg.logger.get("wandb")):
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cb.get("rich_summary"):
        callbacks.append(RichModelSummary())
    from cola.analysis import InterferenceProbe, LambdaLogger

    if cfg.peft.method == "cola":
        callbacks.append(LambdaLogger(run_dir))
    if cfg.get("analysis", {}).get("probes"):
        callbacks.append(InterferenceProbe(every_n_steps=int(cfg.analysis.get("every_n_steps", 10))))
    return callbacks


def on_slurm() -> bool:
    """Whether this process is a SLURM batch job step (``SLURM_JOB_ID`` set and Lightning detects SLURM, i.e.
    ``SLURM_NTASKS`` set and the job is not an interactive ``bash``/``interactive`` session)."""
    if "SLURM_JOB_ID" not in os.environ:
        return False
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list) -> L.Trainer:
    import lightning as L

    from cola.io import AtomicCheckpointIO

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    kwargs.pop("_target_", None)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    plugins: list = [AtomicCheckpointIO()]
    if on_slurm():
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        # on SIGUSR1 (sbatch --signal=SIGUSR1@90): save <run dir>/hpc_ckpt_<n>.ckpt and `scontrol requeue`;
        # the requeued job finds it in the same run folder and resumes (resolve_ckpt_path)
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1))
    return L.Trainer(
        **kwargs,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=plugins,
    )


# ---------------------------------------------------------------------------------------------- helpers
def _hpc_checkpoints(run_dir: Path) -> list[Path]:
    """Lightning's SLURM preemption checkpoints ``<run dir>/hpc_ckpt_<n>.ckpt``, oldest first."""
    found = [(p, p.stem.rpartition("_")[2]) for p in run_dir.glob("hpc_ckpt_*.ckpt")]
    return [p for p, n in sorted(found, key=lambda x: int(x[1])) if n.isdigit()]


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    ``last`` is ``<run dir>/checkpoints/last.ckpt`` (an error naming the folder when absent); a path must exist.
    Without ``ckpt_path``, a SLURM job whose run folder already holds a checkpoint was requeued (Lightning's
    ``hpc_ckpt_<n>.ckpt`` after SIGUSR1, or ``last.ckpt`` after SIGTERM / periodic saves): it resumes from the
    newest of them.
    """
    if ckpt_path is None:
        if not on_slurm():
            return None
        found = [*_hpc_checkpoints(run_dir)[-1:], *[p for p in [run_dir / "checkpoints" / "last.ckpt"] if p.is_file()]]
        if not found:
            return None
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.info("SLURM job %s was requeued: resuming from %s", os.environ.get("SLURM_JOB_ID"), newest)
        return str(newest)
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise SetupError(
                f"ckpt_path=last but {last} does not exist; resume with hydra.run.dir=<the run folder to continue>"
            )
        return str(last)
    if not Path(ckpt_path).is_file():
        raise SetupError(f"ckpt_path={ckpt_path!r} is not a file")
    return ckpt_path


RESUME_MAY_CHANGE = (
    "ckpt_path",
    "resume_finished",
    "third_party_logs",
    "trainer.",
    "callbacks.",
    "logger.",
    "tags",
    "paths.",
    "data.root",
    "data.num_workers",
    "data.image_dir",
    "data.split_root",
    "analysis.",
)
"""Config keys a resumed run may change (where it runs, how it logs, how long it trains); any other difference
from the run folder's ``config.yaml`` is refused: the checkpoint belongs to that configuration."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_differences(saved: dict[str, Any], current: dict[str, Any], *, allowed: tuple[str, ...] = ()) -> list[str]:
    """``key: run X != now Y`` for every dotted key that differs, except those starting with an ``allowed`` prefix."""
    a, b = _flatten(saved), _flatten(current)
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k.startswith(allowed) or k in {p.rstrip(".") for p in allowed}:
            continue
        if a.get(k, "<missing>") != b.get(k, "<missing>"):
            diffs.append(f"{k}: run {a.get(k, '<missing>')!r} != now {b.get(k, '<missing>')!r}")
    return diffs


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Loads a training checkpoint with ``weights_only=True`` (no code runs); a clear error if it is not one."""
    import torch

    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a checkpoint of this repo"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SetupError(
            f"ckpt_path={str(path)!r} is not a checkpoint train.py wrote (torch.load with weights_only=True failed: "
            f"{first[:200]}); pass a run's checkpoints/last.ckpt or best.ckpt, or ckpt_path=last with hydra.run.dir"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "cola_peft_config" not in ckpt:
        raise SetupError(
            f"ckpt_path={str(path)!r} is not a checkpoint train.py wrote (it has no state_dict / cola_peft_config); "
            "pass a run's checkpoints/last.ckpt or best.ckpt"
        )
    return ckpt


def check_checkpoint(path: str | Path, module) -> None:
    """The checkpoint's peft config and tensors match ``module`` (what Lightning would find only mid-load)."""
    try:
        module.check_checkpoint_fits(read_checkpoint(path), exact=True)
    except ValueError as e:
        raise SetupError(f"ckpt_path={str(path)!r}: {e}") from None


def check_resume(cfg: DictConfig, run_dir: Path, ckpt: str, module) -> None:
    """Before anything is written into ``run_dir``: the run is not finished (unless ``resume_finished=true``), the
    checkpoint is one of this model, and the run folder's ``config.yaml`` is this configuration."""
    if (run_dir / "metrics.json").is_file() and not cfg.get("resume_finished", False):
        raise SetupError(
            f"run folder {run_dir} holds a finished run (metrics.json exists); resuming would overwrite its results. "
            "Add resume_finished=true to continue training it anyway, or choose a new hydra.run.dir"
        )
    check_checkpoint(ckpt, module)
    saved_cfg = run_dir / "config.yaml"
    if saved_cfg.is_file():
        saved = OmegaConf.to_container(OmegaConf.load(saved_cfg), resolve=False)
        diffs = config_differences(saved, job_config(cfg), allowed=RESUME_MAY_CHANGE)
        if diffs:
            raise SetupError(
                f"run folder {run_dir} was made with another configuration ({len(diffs)} difference(s): "
                + "; ".join(diffs[:6])
                + ("; ..." if len(diffs) > 6 else "")
                + "); resume with the run's own overrides, or choose a new hydra.run.dir"
            )


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def attach_file_log(run_dir: Path, name: str = "train.log") -> None:
    """Logs into ``<run dir>/train.log`` (appending, so a resumed run continues it) once the inputs are checked:
    a run refused at setup leaves its folder untouched (configs/hydra/job_logging/cola.yaml logs to the console
    only)."""
    path = (run_dir / name).resolve()
    root = logging.getLogger()
    if any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path for h in root.handlers):
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)


BANNERS = ("💡 Tip:",)  # Lightning's advertising lines (litlogger / litmodels)


class _DropBanners(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(BANNERS)


def single_log_lines() -> None:
    """Every log line once: ``import lightning`` gives its logger a console handler of its own on top of the root
    handler its records propagate to (Hydra's job logging), so each Lightning line printed twice."""
    import lightning  # noqa: F401  (adds the handler being removed)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if type(h) is logging.StreamHandler:
                logger.removeHandler(h)
        logger.propagate = True


def quiet_third_party(enabled: bool = True) -> None:
    """Silences library banners that bury the run's own output (``third_party_logs=false``, the default): the
    transformers load reports and progress bars, Lightning's tips and its "few dataloader workers" hints. Warnings
    and errors of every library still show; ``third_party_logs=true`` brings everything back."""
    if not enabled:
        return
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropBanners) for f in logger.filters):
            logger.addFilter(_DropBanners())
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def keep_csv_history(run_dir: Path) -> None:
    """Before a resumed run's CSVLogger starts (it deletes an existing ``metrics.csv``), renames the interrupted
    run's log to ``metrics.<n>.csv``."""
    csv = run_dir / "csv" / "metrics.csv"
    if csv.is_file():
        n = 1
        while (kept := csv.with_name(f"metrics.{n}.csv")).exists():
            n += 1
        csv.rename(kept)
        log.info("kept the interrupted run's CSV log as %s", kept)


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved job config, without the ``hydra`` node a composed config (tests, notebooks) carries."""
    return OmegaConf.to_container(OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"}), resolve=True)


def job_config_yaml(cfg: DictConfig) -> str:
    """:func:`job_config` as YAML (the run folder's ``config.yaml``)."""
    return OmegaConf.to_yaml(job_config(cfg))


def _flat_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for res in results:
        for k, v in res.items():
            if "/" in k and not k.startswith(("train/", "model/")):
                out[k] = float(v)
    return out


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
    ``<split>/fscore_fixed_mask``, the thresholded mean training mask); ``{}`` for a DataModule without one.
    A floor that cannot be computed is a warning: it never costs the run its ``metrics.json``.
    """
    floor_metrics = getattr(datamodule, "floor_metrics", None)
    if not callable(floor_metrics):
        return {}
    try:
        return dict(floor_metrics())
    except (OSError, ValueError, RuntimeError) as e:
        log.warning("the floor metrics could not be computed (%s: %s); metrics.json has none", type(e).__name__, e)
        return {}


def print_metrics_table(metrics: dict[str, Any], title: str, run_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    splits = list(dict.fromkeys(k.split("/")[0] for k in metrics if "/" in k and k.split("/")[0] not in NOT_SPLITS))
    names = list(dict.fromkeys(k.split("/", 1)[1] for k in metrics if k.split("/")[0] in splits))
    table = Table(title=title)
    table.add_column("split")
    for n in names:
        table.add_column(n, justify="right")
    for s in splits:
        table.add_row(s, *[f"{metrics[f'{s}/{n}']:.4f}" if f"{s}/{n}" in metrics else "-" for n in names])
    console = Console()
    console.print(table)
    console.print(f"trainable parameters: {metrics.get('params/trainable', 0):,} of {metrics.get('params/total', 0):,}")
    if run_dir is not None:
        console.print(f"run folder: {run_dir}")  # the last line: where everything above was written


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# ---------------------------------------------------------------------------------------------- entry points
def setup(cfg: DictConfig, run_dir: Path, *, resuming: bool):
    """Everything before training; any bad input surfaces here as a :class:`SetupError`."""
    try:
        validate_config(cfg)
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
        if hasattr(datamodule, "validate"):
            datamodule.validate()
        import lightning as L

        L.seed_everything(cfg.seed, workers=True)
        encoder = build_encoder(cfg)
        module = build_module(cfg, encoder, datamodule)
    except (ValueError, FileNotFoundError, KeyError, TypeError) as e:
        raise SetupError(str(e)) from e
    except InstantiationException as e:  # a constructor's own error, wrapped by hydra: report that error
        raise SetupError(str(e.__cause__ or e)) from e
    return datamodule, module


def train(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Trains and tests one configuration; returns the flat metrics written to ``metrics.json``."""
    t0 = time.time()
    single_log_lines()
    quiet_third_party(not cfg.get("third_party_logs", False))
    try:
        ckpt = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
        datamodule, module = setup(cfg, run_dir, resuming=ckpt is not None)
        if ckpt is not None:  # every input checked before the first write into the run folder
            check_resume(cfg, run_dir, ckpt, module)
        attach_file_log(run_dir)
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from cola.io import atomic_write_text

        atomic_write_text(run_dir / "config.yaml", job_config_yaml(cfg))
        if ckpt is not None and cfg.logger.get("csv"):
            keep_csv_history(run_dir)
        loggers = build_loggers(cfg, run_dir)
        callbacks = build_callbacks(cfg, run_dir)
        trainer = build_trainer(cfg, run_dir, loggers, callbacks)
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
        t_train = time.time() - t0
        if getattr(module, "skipped_batches", 0):
            log.warning(
                "%d training batches / optimiser steps were skipped for non-finite losses or gradients",
                module.skipped_batches,
            )
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        best = best if best and Path(best).is_file() and not trainer.fast_dev_run else None
        best_mask = _mask_checkpoint(cfg, trainer)  # before testing: loading best.ckpt restores callback states
        results = trainer.validate(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        results += trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        metrics = _flat_metrics(results)
        if best_mask is not None:
            # task.monitor_mask (official grounding): mask metrics come from the best-mask checkpoint
            mask_results = trainer.validate(module, datamodule=datamodule, ckpt_path=best_mask, verbose=False)
            mask_results += trainer.test(module, datamodule=datamodule, ckpt_path=best_mask, verbose=False)
            metrics.update(
                {k: v for k, v in _flat_metrics(mask_results).items() if k.rpartition("/")[2] in MASK_METRICS}
            )
        metrics.update(reference_metrics(datamodule))
        counts = module.parameter_counts()
        metrics.update({"params/trainable": counts["trainable"], "params/total": counts["total"]})
        metrics.update({"time/train_s": round(t_train, 2), "time/total_s": round(time.time() - t0, 2)})
        skipped = int(getattr(datamodule, "num_skipped", 0))
        if skipped:
            log.warning("%d samples were skipped because their files could not be read (warnings above)", skipped)
            metrics["data/skipped_samples"] = skipped
        if getattr(module, "skipped_batches", 0):
            metrics["train/skipped_batches"] = int(module.skipped_batches)
        if trainer.is_global_zero:
            save_adapters(
                run_dir / "adapter.safetensors",
                module,
                config=peft_dict(cfg),
                extra_prefixes=module.head_prefixes(),
                metadata={"task": str(cfg.task.name), "best_checkpoint": str(best)},
            )
            atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    finally:
        _finish_wandb()
    if trainer.is_global_zero:  # after W&B's own closing lines: the table and the run folder end the output
        print_metrics_table(metrics, f"{cfg.task.name} | {cfg.peft.method}", run_dir)
    return metrics


def find_run_config(ckpt_path: Path) -> Path:
    """The run's ``config.yaml`` for a run folder, its adapter file or one of its checkpoints."""
    for parent in [ckpt_path, *ckpt_path.parents][:3]:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise SetupError(f"no config.yaml found in or above {ckpt_path}; is it inside a run folder of train.py?")


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
    OmegaConf.update(merged, "logger", OmegaConf.create({"csv": False, "wandb": None}), force_add=True)
    datamodule, module = setup(merged, run_dir, resuming=True)
    adapter = ckpt / "adapter.safetensors" if ckpt.is_dir() else ckpt
    if adapter.suffix == ".safetensors":
        try:
            load_adapters(adapter, module, config=peft_dict(merged), extra_prefixes=module.head_prefixes())
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
        results = trainer.validate(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        results += trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        metrics = _flat_metrics(results)
        metrics.update(reference_metrics(datamodule))
        counts = module.parameter_counts()
        metrics.update({"params/trainable": counts["trainable"], "params/total": counts["total"]})
        atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
    finally:
        _finish_wandb()
    print_metrics_table(metrics, f"eval of {cfg.ckpt_path}", run_dir)
    return metrics
