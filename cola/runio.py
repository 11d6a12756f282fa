"""The run folder: what a run reads from it and writes into it, besides the checkpoints.

- the checkpoint a run continues from (``ckpt_path=last``, a path, or a requeued SLURM job's own checkpoints);
- the resolved job config (``config.yaml``) and the check that a resumed run is the same configuration;
- the training-checkpoint checks done before Lightning loads one (``weights_only``, peft config, tensors);
- the log file (``train.log``, attached once the inputs are checked) and the console's noise filters;
- the metrics: flattened from Lightning's results, written atomically (``metrics.json``), printed as a table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cola.callbacks.slurm import hpc_checkpoints, on_slurm
from cola.dicts import differences
from cola.io import atomic_write_text
from cola.validation import SetupError

log = logging.getLogger(__name__)

NOT_SPLITS = ("params", "time", "data", "train")  # metrics.json key prefixes that are not evaluation splits


# ---------------------------------------------------------------------------------------------- config and resume
def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    ``last`` is ``<run dir>/checkpoints/last.ckpt`` (an error naming the folder when absent); a path must exist.
    Without ``ckpt_path``, a SLURM job whose run folder already holds a checkpoint was requeued (Lightning's
    ``hpc_ckpt_<n>.ckpt`` after SIGUSR1, or ``last.ckpt`` after SIGTERM / periodic saves): it resumes from the
    newest of them.

    Raises:
        SetupError: ``ckpt_path=last`` without ``last.ckpt``, or a path that is not a file.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path is None:
        if not on_slurm():
            return None
        found = [*hpc_checkpoints(run_dir)[-1:], *[p for p in [last] if p.is_file()]]
        if not found:
            return None
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.info("SLURM job %s was requeued: resuming from %s", os.environ.get("SLURM_JOB_ID"), newest)
        return str(newest)
    if ckpt_path == "last":
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
    "resume_sweep",
    "restart_changed",
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
        diffs = differences(saved, job_config(cfg), allowed=RESUME_MAY_CHANGE)
        if diffs:
            raise SetupError(
                f"run folder {run_dir} was made with another configuration ({len(diffs)} difference(s): "
                + "; ".join(diffs[:6])
                + ("; ..." if len(diffs) > 6 else "")
                + "); resume with the run's own overrides, or choose a new hydra.run.dir"
            )


# ---------------------------------------------------------------------------------------------- logs
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


def start_run_folder(cfg: DictConfig, run_dir: Path, *, resumed: bool) -> None:
    """The first writes into a checked run folder: ``train.log``, ``config.yaml`` and, for a resumed run, the
    interrupted run's CSV log kept aside."""
    attach_file_log(run_dir)
    atomic_write_text(run_dir / "config.yaml", job_config_yaml(cfg))
    if resumed and cfg.logger.get("csv"):
        keep_csv_history(run_dir)


def job_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved job config, without the ``hydra`` node a composed config (tests, notebooks) carries."""
    return OmegaConf.to_container(OmegaConf.create({k: cfg[k] for k in cfg if k != "hydra"}), resolve=True)


def job_config_yaml(cfg: DictConfig) -> str:
    """:func:`job_config` as YAML (the run folder's ``config.yaml``)."""
    return OmegaConf.to_yaml(job_config(cfg))


# ---------------------------------------------------------------------------------------------- metrics
def flat_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    """The ``split/metric`` values of ``trainer.validate/test`` results as one flat dict (train and model keys
    left out)."""
    out: dict[str, float] = {}
    for res in results:
        for k, v in res.items():
            if "/" in k and not k.startswith(("train/", "model/")):
                out[k] = float(v)
    return out


MAX_METRIC_COLUMNS = 6
"""Up to this many metrics the final table has one column per metric; beyond, one row per metric."""


def print_metrics_table(metrics: dict[str, Any], title: str, run_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    splits = list(dict.fromkeys(k.split("/")[0] for k in metrics if "/" in k and k.split("/")[0] not in NOT_SPLITS))
    names = list(dict.fromkeys(k.split("/", 1)[1] for k in metrics if k.split("/")[0] in splits))

    def cell(split: str, name: str) -> str:
        v = metrics.get(f"{split}/{name}")
        return "-" if v is None or v != v else f"{v:.4f}"  # NaN: a metric with no sample in the split

    table = Table(title=title)
    if len(names) <= MAX_METRIC_COLUMNS:  # one row per split
        table.add_column("split")
        for n in names:
            table.add_column(n, justify="right")
        for s in splits:
            table.add_row(s, *[cell(s, n) for n in names])
    else:  # many metrics (AVQA's per-type accuracies): one row per metric, so the names stay readable
        table.add_column("metric")
        for s in splits:
            table.add_column(s, justify="right")
        for n in names:
            table.add_row(n, *[cell(s, n) for s in splits])
    console = Console()
    console.print(table)
    console.print(f"trainable parameters: {metrics.get('params/trainable', 0):,} of {metrics.get('params/total', 0):,}")
    if run_dir is not None:
        console.print(f"run folder: {run_dir}")  # the last line: where everything above was written


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Writes ``<run dir>/metrics.json`` atomically: its presence means the run finished.

    The file is strict JSON: a non-finite value (NaN, e.g. every metric of a split whose samples were all
    unreadable) is left out, with one warning naming the keys; an absent key is what a metric without any sample
    is everywhere (AVQA's question types without a question are never logged, :func:`cola.metrics.avqa.absent_keys`).
    """
    dropped = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
    if dropped:
        log.warning("metrics.json: %s left out (not a finite number: no sample evaluated)", ", ".join(dropped))
    kept = {k: v for k, v in metrics.items() if k not in dropped}
    atomic_write_text(run_dir / "metrics.json", json.dumps(kept, indent=2, sort_keys=True))


def finish_wandb() -> None:
    """Closes the W&B run of this process, if any (a sweep runs its jobs in one process)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def find_run_config(ckpt_path: Path) -> Path:
    """The run's ``config.yaml`` for a run folder, its adapter file or one of its checkpoints."""
    for parent in [ckpt_path, *ckpt_path.parents][:3]:
        if (parent / "config.yaml").is_file():
            return parent / "config.yaml"
    raise SetupError(f"no config.yaml found in or above {ckpt_path}; is it inside a run folder of train.py?")
