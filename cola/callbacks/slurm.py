"""SLURM preemption: save, requeue, and find the checkpoint of a requeued job.

Submitted with ``sbatch --signal=SIGUSR1@90`` (README "Sweeps, several GPUs, SLURM"), a batch job receives SIGUSR1
before its time limit. Lightning's :class:`~lightning.pytorch.plugins.environments.SLURMEnvironment` then writes
``<run dir>/hpc_ckpt_<n>.ckpt`` and calls ``scontrol requeue``; the requeued job starts in the same run folder with
no ``ckpt_path`` and resumes from the newest checkpoint there (:func:`cola.callbacks.resume.resolve_ckpt_path`).
A checkpoint written by that handler lands in the middle of a training batch: :class:`cola.callbacks.resume.ResumeState`
rewinds the batch, so the resumed run redoes it exactly.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def on_slurm() -> bool:
    """Whether this process is a SLURM batch job step (``SLURM_JOB_ID`` set and Lightning detects SLURM, i.e.
    ``SLURM_NTASKS`` set and the job is not an interactive ``bash``/``interactive`` session)."""
    if "SLURM_JOB_ID" not in os.environ:
        return False
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def requeue_plugins() -> list:
    """The Trainer plugins of a SLURM batch job (save + ``scontrol requeue`` on SIGUSR1); ``[]`` elsewhere."""
    if not on_slurm():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR1)]


def hpc_checkpoints(run_dir: Path) -> list[Path]:
    """Lightning's SLURM preemption checkpoints ``<run dir>/hpc_ckpt_<n>.ckpt``, oldest first."""
    found = [(p, p.stem.rpartition("_")[2]) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt")]
    return [p for p, n in sorted((x for x in found if x[1].isdigit()), key=lambda x: int(x[1]))]
