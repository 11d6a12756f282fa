"""Sweeps a researcher can leave running: a multirun re-run into its folder runs only what is not finished.

``python train.py -m <overrides> hydra.sweep.dir=<dir>`` (or the shorthand ``resume_sweep=<dir>``) with the overrides
of the sweep that made ``<dir>`` decides, job by job, before any work (README "An interrupted sweep, its status and its comparison"):

- **the job's key**: its values of the keys the sweep varies — the command line's sweep overrides
  (``peft=lora,cola``) and the experiment's ``hydra.sweeper.params`` (``seed: 0,1,2``), read from Hydra's
  ``<sweep>/multirun.yaml`` — sorted by key, e.g. ``peft=cola seed=1``. Every job folder records its overrides in
  ``job.json``; a job's folder is the one whose overrides give the same key, whatever its number (Hydra numbers jobs
  in launch order, which changes when the sweep's arguments are reordered or a value is added; a folder from before
  ``job.json`` existed is matched by its number). Keys that only say how a sweep is re-run (:data:`NOT_IN_KEY`) are
  never part of a key.
- **done** (``metrics.json``) and the same resolved config: skipped, one console line, nothing written;
- **partial** (``checkpoints/last.ckpt`` or a SLURM ``hpc_ckpt_<n>.ckpt``; the newest) and the same config: resumed
  from it through ``ckpt_path``, with the exact-resume guarantees of single runs (:mod:`cola.callbacks.resume`);
- **started but no checkpoint yet**: run again in its folder, the earlier attempt's files moved to
  ``<job>/previous/<n>/``;
- **never started** (no folder with its key): run, in Hydra's folder for it, or ``<num>_<hash of the key>`` when
  that number holds another job;
- **another config** (any difference outside :data:`SWEEP_MAY_CHANGE`, e.g. an edited experiment file or another
  common override): refused with the differences (one paragraph, exit 2), unless ``restart_changed=true``: then the
  old attempt goes to ``<job>/previous/<n>/`` and the job starts over;
- **running** elsewhere (its ``job.json`` names a live process: same host and the pid alive, or a heartbeat younger
  than :data:`STALE_S`): refused.

:class:`SweepCheck` (a Hydra callback, ``configs/train.yaml``) makes these decisions for every job when the multirun
starts, so that a refusal comes before the first job runs, and prints the plan in one line;
:func:`cola.harness.train_job` makes the decision of one job inside it (with either launcher, ``basic`` or
``submitit_*``) and runs it.

:class:`JobRecord` writes ``job.json``: the job's key and overrides, and one entry per attempt (host, pid, SLURM job,
start, heartbeat every :data:`HEARTBEAT_S` seconds, end, outcome ``running|finished|failed|stopped``, the error,
the step reached and the total). ``scripts/sweep_status.py`` (:mod:`cola.sweep_status`) reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cola.dicts import differences
from cola.io import atomic_write_text
from cola.runio import job_config
from cola.validation import SetupError

log = logging.getLogger("cola.sweep")

JOB_FILE = "job.json"
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of the sweep's config and arguments, in the sweep folder
PREVIOUS = "previous"
NOT_IN_KEY = ("resume_sweep", "restart_changed", "ckpt_path", "resume_finished", "third_party_logs")
"""Overrides that say how a sweep is (re-)run, never which job it is."""
SWEEP_MAY_CHANGE = (
    *NOT_IN_KEY,
    "tags",
    "paths.",
    "logger.",
    "data.root",
    "data.num_workers",
    "data.image_dir",
    "data.split_root",
    "analysis.",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "callbacks.model_checkpoint.every_n_train_steps",
    "callbacks.periodic_checkpoint.",
    "callbacks.rich_summary",
    "callbacks.lr_monitor",
)
"""Config keys in which a finished or partial job may differ from its re-run and still count as the same job: where
it runs and reads its data, how it logs, how often it saves a resume point. Anything else (``trainer.max_epochs``,
``optim.*``, ...) makes another job, which is refused unless ``restart_changed=true``."""
HEARTBEAT_S = float(os.environ.get("COLA_HEARTBEAT_S", "30"))
STALE_S = 4 * HEARTBEAT_S + 30
"""A job whose last heartbeat is older than this is not running (on another host, where its pid cannot be checked)."""


# ---------------------------------------------------------------------------------------------- the sweep's jobs
def override_key(override: str) -> str:
    """The config key of an override: ``peft=lora`` -> ``peft``, ``+model.x=1`` -> ``model.x``, ``~a.b`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]


@dataclass(frozen=True)
class SweepDefinition:
    """The jobs of a multirun as Hydra's basic sweeper expands them.

    Attributes:
        swept: the keys with several values (they make a job's key), in the order given.
        jobs: each job's overrides, in launch order (index = ``hydra.job.num``).
    """

    swept: tuple[str, ...]
    jobs: tuple[tuple[str, ...], ...]

    def key(self, overrides: Sequence[str]) -> str:
        return job_key(overrides, self.swept)


def sweep_definition(overrides: Sequence[str], params: Mapping[str, Any] | None = None) -> SweepDefinition:
    """Expands a multirun's arguments (``hydra.overrides.task``, sweep syntax) and ``hydra.sweeper.params`` into its
    jobs, as :class:`hydra._internal.core_plugins.basic_sweeper.BasicSweeper` does."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [f"{k}={v}" for k, v in (params or {}).items()] + [str(o) for o in overrides]
    parsed = OverridesParser.create().parse_overrides(args)
    swept = tuple(dict.fromkeys(override_key(o.input_line) for o in parsed if o.is_sweep_override()))
    jobs = BasicSweeper.split_arguments(parsed, None)[0]
    return SweepDefinition(tuple(k for k in swept if k not in NOT_IN_KEY), tuple(tuple(j) for j in jobs))


def read_definition(sweep_dir: Path) -> SweepDefinition | None:
    """The definition of the sweep in ``sweep_dir`` from Hydra's ``multirun.yaml`` (written when a multirun starts,
    before its first job); ``None`` without one."""
    path = Path(sweep_dir) / MULTIRUN_FILE
    if not path.is_file():
        return None
    hydra = OmegaConf.load(path).get("hydra") or {}
    overrides = OmegaConf.to_container(OmegaConf.select(hydra, "overrides.task") or [], resolve=False)
    params = OmegaConf.select(hydra, "sweeper.params")
    params = OmegaConf.to_container(params, resolve=False) if params is not None else None
    return sweep_definition(overrides, params)  # type: ignore[arg-type]


def job_key(overrides: Sequence[str], swept: Sequence[str]) -> str:
    """The job's overrides of the swept keys, sorted by key and joined by spaces (``peft=cola seed=1``)."""
    keys = {override_key(k) for k in swept}
    return " ".join(sorted((str(o) for o in overrides if override_key(str(o)) in keys), key=override_key))


# ---------------------------------------------------------------------------------------------- job folders
def read_record(folder: Path) -> dict[str, Any] | None:
    """A job folder's ``job.json`` (``None`` when absent or unreadable)."""
    try:
        data = json.loads((Path(folder) / JOB_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def job_folders(sweep_dir: Path) -> list[Path]:
    """The folders of ``sweep_dir`` that hold a job (``config.yaml`` or ``job.json``), numbers first in order."""
    if not Path(sweep_dir).is_dir():
        return []
    found = [
        d
        for d in Path(sweep_dir).iterdir()
        if d.is_dir() and not d.is_symlink() and not d.name.startswith(".") and _holds_job(d)
    ]
    return sorted(found, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def _holds_job(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / JOB_FILE).is_file()


def locate(sweep_dir: Path, key: str, swept: Sequence[str], num: int | None) -> list[Path]:
    """The folders of the job with this key: those whose ``job.json`` overrides give the key; a folder without
    ``job.json`` (older runs) is the job's when its name is the job's number."""
    out = []
    for folder in job_folders(sweep_dir):
        record = read_record(folder)
        if record is not None and isinstance(record.get("overrides"), list):
            if job_key(record["overrides"], swept) == key:
                out.append(folder)
        elif num is not None and folder.name == str(num):
            out.append(folder)
    return out


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a partial job resumes from: the newest of ``checkpoints/last.ckpt`` and SLURM's
    ``hpc_ckpt_<n>.ckpt``."""
    from cola.callbacks.slurm import hpc_checkpoints

    found = [*hpc_checkpoints(folder)[-1:], *[p for p in [folder / "checkpoints" / "last.ckpt"] if p.is_file()]]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def checkpoint_step(path: Path) -> int | None:
    """The global step saved in a training checkpoint (memory-mapped: the tensors are not read)."""
    import torch

    try:
        return int(torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint has no step to report
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child that its parent has not reaped yet is a zombie: not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def attempt_running(attempt: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether an attempt of ``job.json`` is running now: its outcome is ``running``, its heartbeat is younger than
    :data:`STALE_S` and, on this host, its process is alive."""
    if attempt.get("outcome") != "running":
        return False
    now = time.time() if now is None else now
    if now - float(attempt.get("heartbeat") or 0) > STALE_S:
        return False
    if attempt.get("host") == socket.gethostname() and isinstance(attempt.get("pid"), int):
        return _pid_alive(attempt["pid"])
    return True


def _slurm_job() -> str | None:
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def running_elsewhere(folder: Path) -> dict[str, Any] | None:
    """The attempt of another live process that runs the job in ``folder`` (not this process, nor this SLURM job
    requeued), if any."""
    record = read_record(folder)
    attempts = (record or {}).get("attempts") or []
    last = attempts[-1] if attempts else None
    if not last or not attempt_running(last):
        return None
    if last.get("host") == socket.gethostname() and last.get("pid") == os.getpid():
        return None
    if last.get("slurm_job") and last.get("slurm_job") == _slurm_job():
        return None  # this SLURM job, requeued: its earlier process is gone
    return last


# ---------------------------------------------------------------------------------------------- decisions
@dataclass
class JobPlan:
    """What a sweep job does.

    Attributes:
        action: ``run``, ``resume`` or ``skip``.
        key: the job's key.
        run_dir: the job's folder (``None``: a new folder, chosen by :func:`apply_plan`).
        reason: what was found, for the console line.
        ckpt: the checkpoint to resume from.
        step: its global step.
        metrics: a skipped job's ``metrics.json``.
        clear: move the folder's earlier attempt to ``previous/<n>/`` before running.
        diffs: the config differences of a restarted job.
    """

    action: str
    key: str
    run_dir: Path | None
    reason: str
    ckpt: Path | None = None
    step: int | None = None
    metrics: dict[str, Any] | None = None
    clear: bool = False
    diffs: list[str] = field(default_factory=list)


class ConfigChanged(SetupError):
    """A sweep job whose folder holds a run of another configuration (without ``restart_changed``)."""

    def __init__(self, jobs: list[tuple[str, Path]], diffs: list[str]) -> None:
        self.jobs, self.diffs = jobs, diffs
        shown = "; ".join(diffs[:8]) + ("; ..." if len(diffs) > 8 else "")
        which = ", ".join(f"[{key or 'the only job'}] in {folder}" for key, folder in jobs[:6])
        which += f" and {len(jobs) - 6} more" if len(jobs) > 6 else ""
        super().__init__(
            f"sweep job{'s' * (len(jobs) > 1)} {which} {'were' if len(jobs) > 1 else 'was'} run with another "
            f"configuration ({len(diffs)} difference(s): {shown}). Re-run the sweep with its own overrides, give "
            "another hydra.sweep.dir, or add restart_changed=true to start the jobs whose config changed over (their "
            f"earlier attempt is kept in <job>/{PREVIOUS}/<n>/)"
        )


def plan_job(
    cfg: DictConfig, *, sweep_dir: Path, job_dir: Path | None, overrides: Sequence[str], num: int | None, swept
) -> JobPlan:
    """Decides what one job of a re-run sweep does (module docstring), without touching any file.

    Args:
        cfg: the job's composed config (its ``restart_changed`` is read).
        sweep_dir: the sweep folder.
        job_dir: the folder Hydra made for the job (``<sweep>/<num>``), or ``None`` before launch.
        overrides: the job's overrides (``hydra.overrides.task``).
        num: the job's number (``hydra.job.num``).
        swept: the swept keys (:class:`SweepDefinition`).

    Raises:
        SetupError: another configuration (without ``restart_changed``), a job running elsewhere, or two folders
            holding the job.
    """
    key = job_key(overrides, swept)
    matches = locate(sweep_dir, key, swept, num)
    if len(matches) > 1:
        raise SetupError(
            f"sweep job [{key}] matches the folders {', '.join(str(m) for m in matches)} of {sweep_dir}: they ran "
            "the same swept values; keep one of them (move the others out of the sweep folder) and re-run"
        )
    if not matches:
        free = job_dir is not None and not (job_dir.is_dir() and _holds_job(job_dir))
        return JobPlan("run", key, job_dir if free else None, "not started")
    folder = matches[0]
    other = running_elsewhere(folder)
    if other is not None:
        raise SetupError(
            f"sweep job [{key}] in {folder} is running (pid {other.get('pid')} on {other.get('host')}, heartbeat "
            f"{time.time() - float(other.get('heartbeat') or 0):.0f} s ago); wait for it or stop it, then re-run"
        )
    saved = folder / "config.yaml"
    if saved.is_file():
        current = cfg.copy()  # as the job would write its config.yaml in that folder (callbacks write under it)
        OmegaConf.update(current, "paths.run_dir", str(folder), force_add=True)
        diffs = differences(
            portable(OmegaConf.to_container(OmegaConf.load(saved), resolve=False)),  # type: ignore[arg-type]
            portable(job_config(current)),
            allowed=SWEEP_MAY_CHANGE,
        )
        if diffs:
            if not cfg.get("restart_changed", False):
                raise ConfigChanged([(key, folder)], diffs)
            return JobPlan(
                "run", key, folder, "config changed, restart_changed=true: starts over", clear=True, diffs=diffs
            )
    if (folder / "metrics.json").is_file():
        metrics = json.loads((folder / "metrics.json").read_text())
        return JobPlan("skip", key, folder, "done with the same config", metrics=metrics)
    ckpt = newest_checkpoint(folder)
    if ckpt is not None:
        return JobPlan("resume", key, folder, "partial", ckpt=ckpt, step=checkpoint_step(ckpt))
    return JobPlan("run", key, folder, "started before, no checkpoint: runs again", clear=True)


def portable(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every string under one of its own ``paths.*`` folders written as ``${paths.<name>}/...``, so
    that a sweep folder or a checkout that moved (``paths.run_dir``, ``paths.data_dir`` ...) is the same config."""
    paths = [(k, str(v)) for k, v in (config.get("paths") or {}).items() if isinstance(v, str)]
    paths = sorted((p for p in paths if p[1].rstrip("/") not in ("", ".")), key=lambda p: (-len(p[1]), p[0]))

    def rel(value: Any) -> Any:
        if isinstance(value, str):
            for name, p in paths:
                root = p.rstrip("/")
                if value == p or value.startswith(root + "/"):
                    return "${paths." + name + "}" + value[len(root) :]
            return value
        if isinstance(value, list):
            return [rel(v) for v in value]
        if isinstance(value, dict):
            return {k: rel(v) for k, v in value.items()}
        return value

    return {k: (v if k == "paths" else rel(v)) for k, v in config.items()}


def move_aside(folder: Path) -> Path | None:
    """Moves everything in ``folder`` but ``previous/`` into ``previous/<n>/`` (n = 1, 2, ...); ``None`` when there
    was nothing to move."""
    entries = [p for p in folder.iterdir() if p.name != PREVIOUS]
    if not entries:
        return None
    n = 1
    while (target := folder / PREVIOUS / str(n)).exists():
        n += 1
    target.mkdir(parents=True)
    for p in entries:
        p.rename(target / p.name)
    return target


def new_folder_name(num: int | None, key: str) -> str:
    """The folder of a new job whose number holds another job: ``<num>_<8 hex digits of the key's hash>``."""
    return f"{num if num is not None else 'job'}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def apply_plan(plan: JobPlan, *, sweep_dir: Path, job_dir: Path, num: int | None) -> Path:
    """Carries out the file moves of a plan and returns the job's folder (removing Hydra's empty folder for the job
    when the job lives in another one)."""
    run_dir = plan.run_dir or sweep_dir / new_folder_name(num, plan.key)
    if plan.clear and run_dir.is_dir() and (kept := move_aside(run_dir)) is not None:
        log.info("sweep job [%s]: the earlier attempt is kept in %s", plan.key, kept)
    run_dir.mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() != job_dir.resolve():
        try:
            job_dir.rmdir()  # Hydra made it for this job; only an empty one goes
        except OSError:
            pass
    return run_dir


def describe(plan: JobPlan, run_dir: Path | None, num: int | None) -> str:
    """The console line of a plan."""
    head = f"sweep job {num} [{plan.key or 'the only job'}]"
    if plan.action == "skip":
        return f"{head}: done in {run_dir} with the same config: skipped"
    if plan.action == "resume":
        return f"{head}: partial in {run_dir}: resuming from {plan.ckpt} at step {plan.step}"
    return f"{head}: {plan.reason}: runs in {run_dir}"


# ---------------------------------------------------------------------------------------------- in the job
def rank_zero() -> bool:
    """Whether this process is rank zero (or not distributed): the one that writes the sweep's records."""
    return all(os.environ.get(v, "0") in ("0", "") for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


class SweepCheck(Callback):
    """Hydra callback (``configs/train.yaml``): when a multirun starts in a folder that holds jobs, decides every
    job (:func:`plan_job`) before the first one runs — one paragraph naming every refused job and its differences
    (exit 2), else one line with the plan."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from cola.cli import fail

        try:
            line = check_sweep(config)
        except SetupError as e:
            fail(str(e))
        if line:
            log.info(line)


def check_sweep(config: DictConfig) -> str | None:
    """The checks of :class:`SweepCheck` on the multirun ``config``; returns the plan's line (``None``: a new sweep).

    Raises:
        SetupError: ``resume_sweep`` names no folder, or some jobs are refused (all of them named).
    """
    from hydra import compose

    sweep_dir = Path(str(config.hydra.sweep.dir))
    resume = config.get("resume_sweep")
    if resume and not Path(str(resume)).is_dir():
        raise SetupError(f"resume_sweep={resume}: no such sweep folder (the folder of the multirun to re-run)")
    if resume and Path(str(resume)).resolve() != sweep_dir.resolve():
        raise SetupError(
            f"resume_sweep={resume} but hydra.sweep.dir={sweep_dir}: give one of them (resume_sweep sets hydra.sweep.dir)"
        )
    if not job_folders(sweep_dir):
        if resume:
            log.info("sweep %s holds no job yet: every job runs", sweep_dir)
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params")
    definition = sweep_definition(
        OmegaConf.to_container(config.hydra.overrides.task, resolve=False),  # type: ignore[arg-type]
        OmegaConf.to_container(params, resolve=False) if params is not None else None,  # type: ignore[arg-type]
    )
    counts: dict[str, int] = {}
    problems: list[str] = []
    changed: dict[tuple[str, ...], list[tuple[str, Path]]] = {}  # the same differences, said once for all their jobs
    for num, overrides in enumerate(definition.jobs):
        key = definition.key(overrides)
        if not locate(sweep_dir, key, definition.swept, num):
            counts["to run"] = counts.get("to run", 0) + 1
            continue
        cfg = compose(config_name=config.hydra.job.config_name, overrides=list(overrides))
        try:
            plan = plan_job(
                cfg, sweep_dir=sweep_dir, job_dir=None, overrides=overrides, num=num, swept=definition.swept
            )
        except ConfigChanged as e:
            changed.setdefault(tuple(e.diffs), []).extend(e.jobs)
            continue
        except SetupError as e:
            problems.append(str(e))
            continue
        label = {"skip": "done (skipped)", "resume": "partial (resumed)"}.get(plan.action, "to run")
        if plan.diffs:
            label = "changed (started over)"
        counts[label] = counts.get(label, 0) + 1
    problems = [str(ConfigChanged(jobs, list(diffs))) for diffs, jobs in changed.items()] + problems
    if problems:
        refused = sum(len(jobs) for jobs in changed.values()) + len(problems) - len(changed)
        raise SetupError(f"{refused} of {len(definition.jobs)} jobs are refused: " + " | ".join(problems))
    summary = ", ".join(f"{n} {label}" for label, n in counts.items())
    return f"re-running sweep {sweep_dir}: {len(definition.jobs)} jobs: {summary}"


# ---------------------------------------------------------------------------------------------- job.json
class JobRecord:
    """``<run dir>/job.json``: the job's key and overrides and its attempts (module docstring).

    One attempt is started by :meth:`start`; a daemon thread refreshes its heartbeat every :data:`HEARTBEAT_S`
    seconds (with the step reached, set by :class:`cola.callbacks.progress.JobProgress`) until :meth:`finish`.

    Args:
        run_dir: the run folder.
        key: the sweep job's key.
        overrides: the job's overrides.
        num: the sweep job's number.
    """

    def __init__(self, run_dir: Path, *, key: str | None = None, overrides=None, num: int | None = None) -> None:
        self.path = Path(run_dir) / JOB_FILE
        self.data: dict[str, Any] = read_record(Path(run_dir)) or {}
        given = {"key": key, "overrides": list(overrides) if overrides is not None else None, "num": num}
        self.data.update({k: v for k, v in given.items() if v is not None})
        self.attempt: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, *, resumed_from_step: int | None = None, started: float | None = None) -> JobRecord:
        now = time.time() if started is None else started
        self.attempt = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slurm_job": _slurm_job(),
            "start": now,
            "heartbeat": now,
            "end": None,
            "outcome": "running",
            "resumed_from_step": resumed_from_step,
            "step": resumed_from_step or 0,
            "total_steps": None,
        }
        self.data.setdefault("attempts", []).append(self.attempt)
        self.write()
        self._thread = threading.Thread(target=self._beat, name="cola-job-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self.write()

    def write(self) -> None:
        with self._lock:
            self.attempt["heartbeat"] = time.time()
            atomic_write_text(self.path, json.dumps(self.data, indent=2))

    def progress(self, *, step: int | None = None, total: int | None = None, best: dict | None = None) -> None:
        """Notes the step reached (and the total, the best monitored score); written with the next heartbeat."""
        with self._lock:
            if step is not None:
                self.attempt["step"] = int(step)
            if total is not None:
                self.attempt["total_steps"] = int(total)
            if best is not None:
                self.data["best"] = best

    def finish(self, outcome: str, error: str | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self.attempt.update({"end": time.time(), "outcome": outcome})
            if error:
                self.attempt["error"] = error
        self.write()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300]}" if text else type(e).__name__


@contextmanager
def job_running(
    run_dir: Path,
    job: Mapping[str, Any] | None = None,
    *,
    resumed_from: str | None = None,
    started: float | None = None,
) -> Iterator:
    """Records one attempt of the run in ``job.json`` (rank zero only; other ranks get ``None``): ``finished`` when
    the body returns, ``stopped`` on SIGTERM (exit 143) or Ctrl-C, else ``failed`` with the error, which is also the
    run log's last ``ERROR`` line. ``started``: when the attempt began (default: now)."""
    if not rank_zero():
        yield None
        return
    step = checkpoint_step(Path(resumed_from)) if resumed_from else None
    record = JobRecord(run_dir, **dict(job or {})).start(resumed_from_step=step, started=started)
    try:
        yield record
    except BaseException as e:
        stopped = isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and e.code == 143)
        error = None if stopped else _first_line(e)
        if error:
            log.error("the run failed: %s", error)
        record.finish("stopped" if stopped else "failed", error)
        raise
    record.finish("finished")
