"""The state of a sweep folder, one row per job (``scripts/sweep_status.py``).

The jobs are the sweep's own, expanded from Hydra's ``<sweep>/multirun.yaml`` as the launcher expanded them, each
found in its folder by its key (:mod:`cola.sweep`); a folder that no job of that definition claims is listed as
well. A job is

- ``done``: its folder holds ``metrics.json``; its key metric is the task's main test metric;
- ``running``: the last attempt of its ``job.json`` is running (alive on this host, or a fresh heartbeat elsewhere),
  at step k of n;
- ``partial at step k of n``: stopped, killed or preempted; k is its newest checkpoint's step (0 without one: it
  starts again), n the run's optimiser steps; its key metric is the best monitored score so far;
- ``failed``: its last attempt raised; the row shows the last ``ERROR`` line of its ``train.log``;
- ``not started``: no folder holds it.

The wall time of a job adds up its attempts (start to end, or to the last heartbeat of one that was killed).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cola.sweep import (
    JOB_FILE,
    attempt_running,
    checkpoint_step,
    job_folders,
    job_key,
    locate,
    newest_checkpoint,
    read_definition,
    read_record,
)

STATES = ("done", "running", "partial", "failed", "not started")


@dataclass
class JobState:
    """One row of the status table.

    Attributes:
        num: the job's number in the sweep (``None``: a folder no job of the sweep claims).
        key: the job's key (its swept overrides).
        folder: its folder, if any.
        state: one of :data:`STATES`.
        detail: the state as shown (``partial at step 2 of 8``).
        metric: the key metric as shown.
        wall_s: the wall time of all its attempts.
        error: a failed job's last error line.
    """

    num: int | None
    key: str
    folder: Path | None
    state: str
    detail: str
    metric: str = ""
    wall_s: float | None = None
    error: str | None = None


def main_metric(metrics: dict[str, Any]) -> str | None:
    """The metric a job is judged by: the task's main test metric (as ``compare_runs.py`` picks it)."""
    from cola.compare import default_metric

    return default_metric([{"metrics": metrics}])


def last_error(folder: Path, record: dict[str, Any] | None) -> str | None:
    """The last ``ERROR`` line of the job's ``train.log`` (its message), else the error its ``job.json`` holds."""
    log = folder / "train.log"
    if log.is_file():
        for line in reversed(log.read_text(errors="replace").splitlines()):
            if "][ERROR] - " in line:
                return line.split("][ERROR] - ", 1)[1].strip()
    attempts = (record or {}).get("attempts") or []
    return attempts[-1].get("error") if attempts else None


def wall_time(record: dict[str, Any] | None, now: float) -> float | None:
    """The job's attempts added up: start to end (or, for one still running, to now; for one killed, to its last
    heartbeat)."""
    attempts = (record or {}).get("attempts") or []
    total = 0.0
    for a in attempts:
        if a.get("end"):
            end = a["end"]
        elif attempt_running(a, now):
            end = now
        else:
            end = a.get("heartbeat") or a.get("start")
        total += max(0.0, float(end) - float(a.get("start") or end))
    return total if attempts else None


def _total_steps(folder: Path, record: dict[str, Any] | None) -> int | None:
    for a in reversed((record or {}).get("attempts") or []):
        if a.get("total_steps"):
            return int(a["total_steps"])
    try:
        import yaml

        steps = (yaml.safe_load((folder / "config.yaml").read_text()) or {}).get("trainer", {}).get("max_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return int(steps) if isinstance(steps, int) and steps > 0 else None


def job_state(folder: Path | None, num: int | None, key: str, now: float | None = None) -> JobState:
    """The state of one job from its folder (``None``: not started)."""
    now = time.time() if now is None else now
    if folder is None or not (folder / "config.yaml").is_file():
        return JobState(num, key, folder, "not started", "not started")
    record = read_record(folder)
    wall = wall_time(record, now)
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        m = main_metric(metrics)
        shown = f"{m} {metrics[m]:.4f}" if m else ""
        if wall is None and isinstance(metrics.get("time/total_s"), (int, float)):
            wall = float(metrics["time/total_s"])
        return JobState(num, key, folder, "done", "done", shown, wall)
    attempts = (record or {}).get("attempts") or []
    last = attempts[-1] if attempts else {}
    total = _total_steps(folder, record)
    of = f" of {total}" if total else ""
    best = (record or {}).get("best") or {}
    shown = f"{best['monitor']} {best['score']:.4f} (best so far)" if "score" in best else ""
    if last and attempt_running(last, now):
        return JobState(num, key, folder, "running", f"running, step {last.get('step', 0)}{of}", shown, wall)
    if last.get("outcome") == "failed":
        return JobState(num, key, folder, "failed", "failed", shown, wall, last_error(folder, record))
    ckpt = newest_checkpoint(folder)
    step = (checkpoint_step(ckpt) if ckpt is not None else None) or 0
    how = {"stopped": " (stopped)"}.get(str(last.get("outcome")), "" if ckpt else " (no checkpoint: starts again)")
    return JobState(num, key, folder, "partial", f"partial at step {step}{of}{how}", shown, wall)


def sweep_status(sweep_dir: Path, now: float | None = None) -> list[JobState]:
    """Every job of the sweep in ``sweep_dir`` (module docstring), in launch order, then the unclaimed folders."""
    sweep_dir = Path(sweep_dir)
    now = time.time() if now is None else now
    definition = read_definition(sweep_dir)
    rows, claimed = [], set()
    if definition is not None:
        for num, overrides in enumerate(definition.jobs):
            key = definition.key(overrides)
            found = locate(sweep_dir, key, definition.swept, num)
            claimed.update(found)
            rows.append(job_state(found[0] if found else None, num, key, now))
    for folder in job_folders(sweep_dir):
        if folder not in claimed:
            overrides = (read_record(folder) or {}).get("overrides") or []
            swept = definition.swept if definition is not None else [o.split("=", 1)[0] for o in overrides]
            key = job_key(overrides, swept) if overrides else f"(no {JOB_FILE})"
            rows.append(job_state(folder, None, key, now))
    return rows


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def format_status(sweep_dir: Path, rows: list[JobState]) -> str:
    """The table (one row per job, a failed job's last error under it) and the progress line."""
    header = ("job", "folder", "overrides", "state", "key metric", "wall time")
    cells = [
        (
            "-" if r.num is None else str(r.num),
            r.folder.name if r.folder is not None and r.folder.is_dir() else "-",
            r.key or "(the only job)",
            r.detail,
            r.metric or "—",
            format_duration(r.wall_s),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)] if cells else []
    lines = [f"sweep {sweep_dir}"]
    if cells:
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r, c in zip(rows, cells):
            lines.append("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
            if r.error:
                lines.append(f"    last error: {r.error}")
    lines.append(progress_line(rows))
    return "\n".join(lines)


def progress_line(rows: list[JobState]) -> str:
    counts = {s: sum(r.state == s for r in rows) for s in STATES}
    parts = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    done = counts["done"]
    pct = 100 * done / len(rows) if rows else 0.0
    return f"progress: {done} of {len(rows)} jobs done ({pct:.0f}%)" + (f": {parts}" if parts else "")


def all_done(rows: list[JobState]) -> bool:
    return bool(rows) and all(r.state == "done" for r in rows)
