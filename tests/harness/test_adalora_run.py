"""peft.intra=adalora through train.py's harness: the run writes the final ranks (adapter metadata,
``adapter.ranks.json``, ``metrics.json``), the allocator's state is in every checkpoint, a run that crashes and resumes
with ``ckpt_path=last`` ends as the uninterrupted one did, and the per-step hook runs once per optimiser step under
gradient accumulation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from cola import harness
from cola.models import DualEncoder
from cola.peft import RANKS_KEY
from tests.conftest import fast_cfg
from tests.harness.test_resume import RESUME_RUN, ckpt_step, crash_at, without_time

# 10 optimiser steps (2 epochs of 5 batches, last.ckpt at steps 3, 6, 9): warm-up to step 2, allocations at steps 4
# and 6, the final allocation at step 7 = 10 - tfinal, masks fixed at steps 8 and 9
ADALORA = ["peft.intra=adalora", "peft.adalora.tinit=2", "peft.adalora.tfinal=3", "peft.adalora.delta_t=2"]


def _adapter(run_dir) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(run_dir / "adapter.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()[RANKS_KEY])


@pytest.fixture(scope="module")
def uninterrupted(synthetic_refcoco, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("adalora_uninterrupted")
    return harness.train(fast_cfg(synthetic_refcoco, run_dir, *RESUME_RUN, *ADALORA, "logger=none"), run_dir), run_dir


def test_a_run_writes_its_final_ranks(uninterrupted):
    metrics, run_dir = uninterrupted
    tensors, budget = _adapter(run_dir)
    assert budget == json.loads((run_dir / "adapter.ranks.json").read_text())
    # tiny towers: 2 blocks x (qkv as 3 slices, proj, fc1, fc2) + 2 layers x 6 linears, 2 streams -> 24 matrices
    b = budget["budget"]
    assert budget["intra"] == "adalora" and budget["matrices"] == 24 and budget["initial_rank"] == 16
    assert b["initial"] == 16 * 24 and b["target"] == b["final"] == 11 * 24  # target rank round(2 * 16 / 3) = 11
    ranks = [r for per_slice in budget["ranks"].values() for r in per_slice]
    assert sum(ranks) == b["final"] and len(set(ranks)) > 1  # the budget moved between matrices
    assert metrics["params/intra_ranks_final"] == b["final"] and metrics["params/intra_ranks_initial"] == b["initial"]
    removed = budget["intra_params"]["initial"] - budget["intra_params"]["final"]
    assert metrics["params/trainable_at_final_budget"] == metrics["params/trainable"] - removed > 0
    for name, per_slice in budget["ranks"].items():  # the masks in the file are the ranks it reports
        mask = tensors[f"{name}.lora_adalora_mask"]
        assert mask.reshape(len(per_slice), -1).sum(1).tolist() == per_slice
        assert not tensors[f"{name}.lora_E"][~mask].any()
    assert int(tensors[f"{next(iter(budget['ranks']))}.lora_adalora_step"]) == 9


def test_resume_after_a_crash_equals_the_uninterrupted_run(uninterrupted, synthetic_refcoco, tmp_path, monkeypatch):
    """Crash at step 8 (after the final allocation at 7); last.ckpt is from step 6, in the budget phase: the resumed
    run redoes the allocation at 6 and the final one at 7 from the saved moving averages and masks."""
    expected, full_dir = uninterrupted
    cfg = fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN, *ADALORA, "logger=none")
    with monkeypatch.context() as m:
        crash_at(m, 8)
        with pytest.raises(RuntimeError, match="simulated crash"):
            harness.train(cfg, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt_step(last) == 6
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    steps = {int(v) for k, v in state.items() if k.endswith("lora_adalora_step")}
    assert steps == {5} and any(k.endswith("lora_adalora_unc_E") and v.any() for k, v in state.items())
    assert any(k.endswith("lora_adalora_mask") and not v.all() for k, v in state.items())  # step 4 allocated
    resumed = harness.train(
        fast_cfg(synthetic_refcoco, tmp_path, *RESUME_RUN, *ADALORA, "logger=none", "ckpt_path=last"), tmp_path
    )
    assert without_time(resumed) == pytest.approx(without_time(expected), abs=1e-6)
    (got, got_budget), (want, want_budget) = _adapter(tmp_path), _adapter(full_dir)
    assert got_budget == want_budget and got.keys() == want.keys()
    for k in want:  # masks, step, averages and weights: the interrupted run's, as far as CPU arithmetic repeats
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


def test_the_hook_runs_once_per_optimiser_step_under_accumulation(synthetic_refcoco, tmp_path, monkeypatch):
    calls = []
    original = DualEncoder.after_optimizer_step

    def record(self, step, total_steps):
        calls.append((step, total_steps))
        return original(self, step, total_steps)

    monkeypatch.setattr(DualEncoder, "after_optimizer_step", record)
    overrides = ["trainer.accumulate_grad_batches=2", "trainer.max_steps=2", "data.limit_per_split=16", "logger=none"]
    overrides += [*ADALORA[:1]]
    overrides += ["peft.adalora.tinit=0", "peft.adalora.tfinal=0"]
    harness.train(fast_cfg(synthetic_refcoco, tmp_path, *overrides), tmp_path)
    assert calls == [(0, 2), (1, 2)]  # 4 batches, 2 optimiser steps, total from the trainer
