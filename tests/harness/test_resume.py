"""Resumption (README.md#sweeps-several-gpus-slurm): a run interrupted mid-epoch and resumed with ``ckpt_path=last``
ends with the metrics of an uninterrupted run; SIGTERM saves ``last.ckpt``; SLURM requeues resume from Lightning's hpc
checkpoint."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from cola import harness
from cola.callbacks.resume import rng_states, set_rng_states
from cola.data.resumable import ResumableDataLoader, ResumableRandomSampler, SeededSamples, rewind_in_flight_batch
from cola.tasks.base import DualStreamTask
from cola.validation import SetupError
from tests.conftest import FAST_RUN, REPO, cli_args, compose_cfg, fast_cfg, two_epoch_run

# 2 epochs of 5 batches, last.ckpt at steps 3, 6 and 9: mid-epoch in both epochs
RESUME_RUN = two_epoch_run(10, 3)


def without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def assert_same_adapters(run_dir: Path, reference_dir: Path) -> None:
    """The exported adapters and heads of two runs agree: an exact resume continues with the same weights.

    Both runs do the same float32 ops in the same order on one thread, so they agree bitwise unless a GEMM kernel
    sums in another order (e.g. for another memory alignment), a few float32 ulps (1.2e-7 at 1): 1e-6 absolute and
    relative leaves room for that. An inexact resume (another batch order, another random draw) is about one AdamW
    step away (adapter lr 5e-4 AVE, 2e-4 RefCOCO): resumes with freshly reseeded augmentations moved them by 1e-4 (AVE)
    and 4e-4 (RefCOCO, measured at 5e-4).
    """
    from cola.peft import read_adapters

    got, want = (read_adapters(folder / "adapter.safetensors")[0] for folder in (run_dir, reference_dir))
    assert got.keys() == want.keys() and got
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def crash_at(monkeypatch, step: int) -> None:
    """Makes training raise when the optimiser has taken ``step`` steps (a crash between two checkpoints)."""
    original = DualStreamTask.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == step:
            raise RuntimeError(f"simulated crash at step {step}")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DualStreamTask, "training_step", training_step)


@pytest.fixture(scope="module")
def uninterrupted(synthetic_refcoco, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return harness.train(fast_cfg(synthetic_refcoco, run_dir, *RESUME_RUN, "logger=none"), run_dir)


# ------------------------------------------------------------------------------------------------ sampler
def test_sampler_is_seeded_per_epoch_and_resumes_at_its_position():
    data = list(range(11))
    a, b = ResumableRandomSampler(data, seed=3), ResumableRandomSampler(data, seed=3)
    first = list(a)
    assert sorted(first) == data and first == list(b)
    a.set_epoch(1)
    assert list(a) != first  # a new order each epoch, from seed + epoch only
    it = iter(b)
    consumed = [next(it) for _ in range(4)]
    state = b.state_dict()
    assert state["num_yielded"] == 4 and state["epoch"] == 0
    fresh = ResumableRandomSampler(data, seed=3)
    fresh.load_state_dict(state)
    fresh.set_epoch(0)  # Lightning sets the epoch again before the resumed epoch starts
    assert consumed + list(fresh) == first
    assert list(fresh) == first  # the offset applies once
    ended = ResumableRandomSampler(data, seed=3)
    ended.load_state_dict({**state, "num_yielded": 11})
    ended.set_epoch(1)  # a checkpoint at the end of epoch 0 resumes with a full epoch 1
    a2 = ResumableRandomSampler(data, seed=3)
    a2.set_epoch(1)
    assert list(ended) == list(a2)


def test_sampler_shards_across_processes_like_distributed_sampler():
    data = list(range(10))
    shards = [list(ResumableRandomSampler(data, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    reference = [list(torch.utils.data.DistributedSampler(data, num_replicas=2, rank=r, seed=0)) for r in (0, 1)]
    assert shards == reference and sorted(shards[0] + shards[1]) == data


def test_loader_state_counts_batches_handed_out_not_prefetched():
    data = list(range(10))
    loader = ResumableDataLoader(data, batch_size=3, sampler=ResumableRandomSampler(data, seed=1))
    full = [b.tolist() for b in loader]
    it = iter(loader)
    head = [next(it).tolist() for _ in range(2)]
    state = loader.state_dict()
    assert state["num_yielded"] == 6
    resumed = ResumableDataLoader(data, batch_size=3, sampler=ResumableRandomSampler(data, seed=1))
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)
    assert head + [b.tolist() for b in resumed] == full
    # creating an iterator never draws from the global RNG (a resumed run would otherwise drift by one draw)
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(before, torch.get_rng_state())


class _RandomDraws(torch.utils.data.Dataset):
    """Sample i is (i, a draw from torch's global generator): an augmentation in miniature."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([float(i), float(torch.rand(()))])


def _epoch(loader: ResumableDataLoader, epoch: int) -> list[list[float]]:
    loader.sampler.set_epoch(epoch)
    return [row for batch in loader for row in batch.tolist()]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_samples_random_draws_depend_on_seed_epoch_and_index_only(workers):
    """The draws a sample gets are the same whichever worker loads it and wherever its epoch is resumed; another
    epoch or seed draws anew; the global generator is left as it was (the dropout stream stays exact)."""
    data = _RandomDraws()

    def loader(seed: int = 5, num_workers: int = workers) -> ResumableDataLoader:
        sampler = ResumableRandomSampler(data, seed=seed)
        return ResumableDataLoader(data, batch_size=3, sampler=sampler, num_workers=num_workers)

    single = loader(num_workers=0) if workers else loader()
    reference = {int(i): d for i, d in _epoch(single, 0)}
    full = loader()
    rows = _epoch(full, 0)
    assert {int(i): d for i, d in rows} == reference and len(reference) == 12  # worker-independent
    assert len(set(reference.values())) == 12
    assert {int(i): d for i, d in _epoch(loader(), 1)} != reference  # a new epoch draws anew
    assert {int(i): d for i, d in _epoch(loader(seed=6), 0)} != reference  # so does another seed
    it = iter(full)
    full.sampler.set_epoch(0)
    head = [row for _ in range(2) for row in next(it).tolist()]
    resumed = loader()
    resumed.load_state_dict(full.state_dict())
    assert head + _epoch(resumed, 0) == rows  # the resumed epoch: same samples, same draws
    torch.manual_seed(0)
    plain = SeededSamples(data)[3]
    torch.manual_seed(0)
    assert torch.equal(plain, data[3])  # a plain key reads with the caller's generator, unseeded
    before = torch.get_rng_state()
    keyed = SeededSamples(data)[(5, 0, 3)]
    assert torch.equal(before, torch.get_rng_state()) and float(keyed[1]) == reference[3]
    assert isinstance(full.dataset, SeededSamples) and full.dataset.dataset is data


def test_a_checkpoint_written_mid_batch_rewinds_that_batch():
    data = list(range(10))
    loader = ResumableDataLoader(data, batch_size=3, sampler=ResumableRandomSampler(data))
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert rewind_in_flight_batch(state)["num_yielded"] == 3 == state["num_yielded"] - 3
    assert rewind_in_flight_batch({"epoch": 0}) == {"epoch": 0}  # another loader's state is left alone
    list(it)  # 3 + 3 + 3 + 1: the last batch is short
    assert loader.state_dict()["num_yielded"] == 10 and rewind_in_flight_batch(loader.state_dict())["num_yielded"] == 9


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    states = rng_states()
    torch.save({"rng": states}, tmp_path / "rng.ckpt")
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_states(torch.load(tmp_path / "rng.ckpt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_lightning_sees_the_loader_as_stateful():
    from lightning.fabric.utilities.types import _Stateful

    data = list(range(4))
    assert isinstance(ResumableDataLoader(data, sampler=ResumableRandomSampler(data)), _Stateful)
    with pytest.raises(TypeError, match="ResumableRandomSampler"):
        ResumableDataLoader(data, shuffle=True)


# ------------------------------------------------------------------------------------------------ in-process resume
def test_resume_after_a_crash_reproduces_the_uninterrupted_metrics(
    uninterrupted, synthetic_refcoco, tmp_path, monkeypatch, caplog
):
    # crash in the second epoch; last.ckpt is from step 6, one batch into it (the SLURM test resumes in epoch 0)
    crash_step, resume_step = 8, 6
    cfg = fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN)
    with monkeypatch.context() as m:
        crash_at(m, crash_step)
        with pytest.raises(RuntimeError, match="simulated crash"):
            harness.train(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == resume_step  # mid-epoch: 5 batches per epoch
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert "cola_rng_states" in state and state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert not any(
        k.startswith("encoder.towers.vision.model.blocks.0.attn.qkv.base_layer") for k in state["state_dict"]
    )
    caplog.set_level(logging.INFO, logger="cola")
    resumed = harness.train(fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN, "ckpt_path=last"), tmp_path)
    assert without_time(resumed) == pytest.approx(without_time(uninterrupted), abs=1e-6)
    assert f"at global step {resume_step}" in caplog.text
    kept = tmp_path / "csv" / "metrics.1.csv"  # the interrupted run's log survives the resume
    assert kept.is_file() and "train/loss" in kept.read_text()


def crash_then_resume(make_cfg, run_dir: Path, monkeypatch, *, crash_step: int, resume_step: int) -> dict:
    """Trains ``make_cfg(run_dir)`` until it crashes at ``crash_step``, checks that last.ckpt is from
    ``resume_step``, then resumes it with ``ckpt_path=last``; returns the resumed run's metrics."""
    with monkeypatch.context() as m:
        crash_at(m, crash_step)
        with pytest.raises(RuntimeError, match="simulated crash"):
            harness.train(make_cfg(run_dir), run_dir)
    assert ckpt_step(run_dir / "checkpoints" / "last.ckpt") == resume_step
    return harness.train(make_cfg(run_dir, "ckpt_path=last"), run_dir)


# AVE on the conftest's synthetic set (6 videos: 5 training rows, 1 val and 1 test video of 10 seconds) with the
# tiny towers: 2 epochs of 3 batches of 2, last.ckpt every 2 steps (steps 2, 4, 6), validation only at the end
AVE_RESUME_RUN = [*two_epoch_run(12, 2), "callbacks.model_checkpoint.monitor=val/acc"]


def ave_cfg(root: Path, run_dir: Path, *overrides: str):
    fast = [o for o in FAST_RUN if not o.startswith("task.head.")]  # the grounding head's sizes; AVE has its own
    args = [*fast, "task=ave", f"data.root={root}", *AVE_RESUME_RUN, "logger=none", *overrides]
    return compose_cfg(args, run_dir=run_dir)


def test_ave_resume_after_a_crash_reproduces_the_uninterrupted_run(ave_root, tmp_path, monkeypatch):
    """The audio-visual path (AST + ViT towers, AVE's random augmentations, per-second head) resumes exactly too.
    AVE's val/test acc move in steps of 0.1 (one 10-second video each), too coarse to show a drift alone, so the
    exported weights are compared as well."""
    full = tmp_path / "full"
    expected = harness.train(ave_cfg(ave_root, full), full)
    assert ckpt_step(full / "checkpoints" / "last.ckpt") == 6  # 3 batches per epoch: step 4 is mid-epoch
    broken = tmp_path / "broken"
    resumed = crash_then_resume(partial(ave_cfg, ave_root), broken, monkeypatch, crash_step=5, resume_step=4)
    assert {"val/acc", "test/acc"} <= set(resumed)
    assert without_time(resumed) == pytest.approx(without_time(expected), abs=1e-6)
    assert_same_adapters(broken, full)


def test_resume_with_two_loader_workers_reproduces_the_uninterrupted_run(synthetic_refcoco, tmp_path, monkeypatch):
    """data.num_workers=2 (persistent worker processes) with the demo's random augmentation: the resumed epoch
    gets exactly the remaining batches, augmentations included, although a resume starts fresh workers (each
    sample's draws come from (seed, epoch, index), cola/data/resumable.py)."""
    from cola.data.base import CoLADataModule

    loaders = []
    real_train_dataloader = CoLADataModule.train_dataloader

    def train_dataloader(self):
        loaders.append(real_train_dataloader(self))
        return loaders[-1]

    monkeypatch.setattr(CoLADataModule, "train_dataloader", train_dataloader)

    def cfg(run_dir: Path, *overrides: str):
        workers = ("data.num_workers=2", "logger=none")
        return fast_cfg(synthetic_refcoco, run_dir, *RESUME_RUN, *workers, *overrides)

    full = tmp_path / "full"
    expected = harness.train(cfg(full), full)
    resumed = crash_then_resume(cfg, tmp_path / "broken", monkeypatch, crash_step=8, resume_step=6)
    assert len(loaders) == 3 and all(loader.num_workers == 2 for loader in loaders)  # full, crashed, resumed
    assert without_time(resumed) == pytest.approx(without_time(expected), abs=1e-6)
    assert_same_adapters(tmp_path / "broken", full)


def test_ckpt_path_last_without_a_checkpoint_names_the_folder(synthetic_refcoco, tmp_path):
    with pytest.raises(SetupError, match=f"{tmp_path / 'checkpoints' / 'last.ckpt'} does not exist"):
        harness.train(fast_cfg(synthetic_refcoco, tmp_path, "ckpt_path=last"), tmp_path)


def test_sigterm_saves_last_ckpt_and_exits_with_a_message(synthetic_refcoco, tmp_path, monkeypatch, caplog):
    original = DualStreamTask.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only flags it; the batch completes
        return original(self, batch, batch_idx)

    monkeypatch.setattr(DualStreamTask, "training_step", training_step)
    caplog.set_level(logging.INFO, logger="cola")
    cfg = fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN, "callbacks.model_checkpoint.every_n_train_steps=null")
    with pytest.raises(SystemExit) as exit_info:
        harness.train(cfg, tmp_path)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert ckpt_step(tmp_path / "checkpoints" / "last.ckpt") == 3  # the batch running at SIGTERM was finished
    assert "stopped by SIGTERM at global step 3" in caplog.text and "ckpt_path=last" in caplog.text
    assert not (tmp_path / "metrics.json").exists()


def test_slurm_requeue_resumes_from_the_hpc_checkpoint(uninterrupted, synthetic_refcoco, tmp_path, monkeypatch):
    """Lightning's SLURM plugin writes <run dir>/hpc_ckpt_<n>.ckpt on SIGUSR1 and requeues; the requeued job
    (same run folder, no ckpt_path) must resume from it instead of refusing the used folder."""
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "cola", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no scontrol: the requeue call fails with a warning
    original = DualStreamTask.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 4:
            # Lightning's handler (registered because the job looks like SLURM) saves hpc_ckpt_1.ckpt right now,
            # in the middle of the 5th batch; without it SIGUSR1 would end this test process
            assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
            os.kill(os.getpid(), signal.SIGUSR1)
        if self.global_step == 7:
            raise RuntimeError("the job is killed after the requeue")
        return original(self, batch, batch_idx)

    cfg = fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN)
    with monkeypatch.context() as m:
        m.setattr(DualStreamTask, "training_step", training_step)
        with pytest.raises(RuntimeError, match="killed after the requeue"):
            harness.train(cfg, tmp_path)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and ckpt_step(hpc) == 4
    assert not any(".base_layer." in k for k in torch.load(hpc, weights_only=True)["state_dict"])  # lean
    (tmp_path / "checkpoints" / "last.ckpt").unlink()  # the hpc checkpoint alone must be enough
    assert harness.resolve_ckpt_path(None, tmp_path) == str(hpc)
    resumed = harness.train(fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN), tmp_path)
    assert without_time(resumed) == pytest.approx(without_time(uninterrupted), abs=1e-6)


def test_outside_slurm_a_used_run_folder_is_not_resumed_silently(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    assert harness.resolve_ckpt_path(None, tmp_path) is None


# ------------------------------------------------------------------------------------------------ subprocess
def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"train.py ended (rc {proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def _popen(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "COLA_ROOT": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# 2 epochs of 10 batches, last.ckpt every 2 steps; validation only at the end
KILL_RUN = two_epoch_run(20, 2)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    uninterrupted, synthetic_refcoco, tmp_path, monkeypatch, caplog
):
    """A train.py process killed with SIGKILL (no handler runs) as soon as its first mid-epoch last.ckpt is on
    disk resumes with ``ckpt_path=last`` to the metrics of the uninterrupted run (the same tiny RESUME_RUN)."""
    broken = tmp_path / "broken"
    proc = _popen(cli_args(synthetic_refcoco, broken, *RESUME_RUN))
    try:
        _wait_for(broken / "checkpoints" / "last.ckpt", proc)  # written atomically: complete once it exists
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (broken / "metrics.json").exists()
    step = ckpt_step(broken / "checkpoints" / "last.ckpt")
    assert step in (3, 6, 9), f"killed at step {step}, not at a mid-epoch checkpoint (5 batches per epoch)"
    monkeypatch.setenv("COLA_ROOT", str(REPO))  # resolve paths.root_dir as the train.py process did
    caplog.set_level(logging.INFO, logger="cola")
    resumed = harness.train(fast_cfg(synthetic_refcoco, broken, *RESUME_RUN, "ckpt_path=last"), broken)
    log_text = (broken / "train.log").read_text()
    assert f"resumed from {broken / 'checkpoints' / 'last.ckpt'} at global step {step}" in log_text
    assert without_time(resumed) == pytest.approx(without_time(uninterrupted), abs=1e-6)


@pytest.mark.ci
def test_sigterm_subprocess_saves_and_exits_cleanly_then_resumes(synthetic_refcoco, tmp_path, monkeypatch):
    """A train.py process stopped by SIGTERM right after its first last.ckpt (step 1 of 20) saves, says how to resume
    and exits with 143; a second train.py process resumes it to the metrics of an uninterrupted run."""
    from tests.conftest import train_py

    full, stopped = tmp_path / "full", tmp_path / "stopped"
    overrides = [*KILL_RUN, "callbacks.model_checkpoint.every_n_train_steps=1"]
    # the uninterrupted reference runs in this process (one train.py start-up, ~20 s, less), on one thread as the
    # train.py processes; COLA_ROOT resolves paths.root_dir as they do
    monkeypatch.setenv("COLA_ROOT", str(REPO))
    expected = without_time(harness.train(fast_cfg(synthetic_refcoco, full, *overrides), full))
    proc = _popen(cli_args(synthetic_refcoco, stopped, *overrides))
    _wait_for(stopped / "checkpoints" / "last.ckpt", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "stopped by SIGTERM" in out + err
    assert (stopped / "checkpoints" / "last.ckpt").is_file() and not (stopped / "metrics.json").exists()
    res = train_py(*cli_args(synthetic_refcoco, stopped, *overrides, "ckpt_path=last"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert without_time(json.loads((stopped / "metrics.json").read_text())) == pytest.approx(expected, abs=1e-6)
