"""Optimiser and schedule options of the task base class (docs/official_settings.md#settings: AdamW / Adam, poly per
epoch, no warm-up)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.test_grounding_task import make_task


def _optimizers(**optim):
    task = make_task("cola", **optim)
    task._trainer = SimpleNamespace(max_epochs=150, estimated_stepping_batches=1000)  # what configure_optimizers reads
    conf = task.configure_optimizers()
    return task, conf["optimizer"], conf["lr_scheduler"]


def test_official_grounding_poly_per_epoch_without_warmup():
    task, opt, sched = _optimizers(
        optimizer="adamw", weight_decay=1e-4, decay_1d=True, schedule="poly", schedule_interval="epoch", warmup_ratio=0
    )
    assert type(opt) is torch.optim.AdamW and sched["interval"] == "epoch"
    # one weight decay for every trainable parameter, as the official param groups
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}
    lam = sched["scheduler"].lr_lambdas[0]
    for epoch in (0, 1, 75, 149):
        assert lam(epoch) == pytest.approx((1 - epoch / 150) ** 0.9, rel=1e-12)


def test_official_av_adam_constant_no_decay():
    _, opt, sched = _optimizers(optimizer="adam", weight_decay=0.0, schedule="constant", warmup_ratio=0.0)
    assert type(opt) is torch.optim.Adam and sched["interval"] == "step"
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0}
    assert all(sched["scheduler"].lr_lambdas[0](i) == 1.0 for i in (0, 10, 999))


def test_demo_defaults_exempt_1d_parameters_from_decay():
    task, opt, _ = _optimizers(weight_decay=0.01)
    decays = {g["name"]: g["weight_decay"] for g in opt.param_groups}
    assert decays["adapters"] == 0.01 and decays["adapters_no_wd"] == 0.0
    lambdas = [p for n, p in task.named_parameters() if n.endswith("cola_lambda")]
    no_wd = next(g for g in opt.param_groups if g["name"] == "adapters_no_wd")["params"]
    assert lambdas and all(any(p is q for q in no_wd) for p in lambdas)


def test_bad_optimiser_options_name_the_key():
    with pytest.raises(ValueError, match=r"optim.optimizer must be one of \['adamw', 'adam'\], got 'sgd'"):
        make_task("cola", optimizer="sgd")
    with pytest.raises(ValueError, match=r"optim.schedule_interval must be one of \['step', 'epoch'\], got 'batch'"):
        make_task("cola", schedule_interval="batch")
    task = make_task("cola", schedule_interval="epoch")
    task._trainer = SimpleNamespace(max_epochs=-1, estimated_stepping_batches=10)
    with pytest.raises(ValueError, match="schedule_interval=epoch needs trainer.max_epochs"):
        task.configure_optimizers()
