"""Optimiser and schedule: the ``optim`` partials the task fills (cola/optim.py; docs/official_settings.md#settings:
AdamW / Adam, poly per epoch, no warm-up)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from cola.harness import build_module
from cola.optim import lr_factor, warmup_schedule
from tests.conftest import compose_cfg, make_task

TRAINER = SimpleNamespace(max_epochs=150, estimated_stepping_batches=1000)  # what configure_optimizers reads


def _configured(task):
    task._trainer = TRAINER
    conf = task.configure_optimizers()
    return task, conf["optimizer"], conf["lr_scheduler"]


def _from_config(*overrides: str):
    """The optimiser and schedule ``train.py`` builds from ``optim.*`` overrides (through the harness)."""
    cfg = compose_cfg([f"optim.{o}" for o in overrides])
    splits = SimpleNamespace(val_split="val", test_splits=["test"])
    return _configured(build_module(cfg, make_task("cola").encoder, splits))


def _old_lr_factor(step, total, *, schedule, warmup_ratio, poly_power, min_lr_ratio):
    """The schedule as the task base class computed it before the partials (the reference the runs were made with)."""
    warmup = max(1, int(warmup_ratio * total)) if warmup_ratio > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "poly":
        return (1 - progress) ** poly_power
    return 1.0


def test_official_grounding_poly_per_epoch_without_warmup():
    task, opt, sched = _from_config(
        "optimizer=adamw", "weight_decay=1e-4", "decay_1d=true", "schedule=poly", "schedule_interval=epoch",
        "warmup_ratio=0",
    )  # fmt: skip
    assert type(opt) is torch.optim.AdamW and sched["interval"] == "epoch"
    assert all(g["fused"] for g in opt.param_groups) and opt.defaults["betas"] == (0.9, 0.999)
    # one weight decay for every trainable parameter, as the official param groups
    assert {g["weight_decay"] for g in opt.param_groups} == {1e-4}
    lam = sched["scheduler"].lr_lambdas[0]
    for epoch in (0, 1, 75, 149):
        assert lam(epoch) == pytest.approx((1 - epoch / 150) ** 0.9, rel=1e-12)


def test_official_av_adam_constant_no_decay():
    _, opt, sched = _from_config("optimizer=adam", "weight_decay=0.0", "schedule=constant", "warmup_ratio=0.0")
    assert type(opt) is torch.optim.Adam and sched["interval"] == "step"
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0}
    assert all(sched["scheduler"].lr_lambdas[0](i) == 1.0 for i in (0, 10, 999))


def test_demo_defaults_groups_and_fused_as_before():
    task, opt, sched = _from_config("weight_decay=0.01", "lr_adapters=1e-3", "lr_heads=2e-3")
    assert type(opt) is torch.optim.AdamW and all(g["fused"] for g in opt.param_groups)
    groups = {g["name"]: (g["initial_lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups}
    assert list(groups) == ["adapters", "adapters_no_wd", "heads", "heads_no_wd"]
    assert [g[:2] for g in groups.values()] == [(1e-3, 0.01), (1e-3, 0.0), (2e-3, 0.01), (2e-3, 0.0)]
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert sum(n for *_, n in groups.values()) == len(trainable)
    lambdas = [p for n, p in task.named_parameters() if n.endswith("cola_lambda")]
    no_wd = next(g for g in opt.param_groups if g["name"] == "adapters_no_wd")["params"]
    assert lambdas and all(any(p is q for q in no_wd) for p in lambdas)


def test_task_defaults_match_the_config_defaults():
    _, opt, sched = _configured(make_task("cola"))
    _, opt_cfg, sched_cfg = _from_config()
    assert type(opt) is type(opt_cfg) and opt.defaults["betas"] == opt_cfg.defaults["betas"]
    a, b = sched["scheduler"].lr_lambdas[0], sched_cfg["scheduler"].lr_lambdas[0]
    assert [a(i) for i in range(0, 1000, 7)] == [b(i) for i in range(0, 1000, 7)]


@pytest.mark.parametrize(
    "schedule,warmup_ratio,total", list(itertools.product(("cosine", "poly", "constant"), (0.0, 0.05, 0.3), (7, 150)))
)
def test_lr_per_step_equals_the_old_formula(schedule, warmup_ratio, total):
    shape = dict(schedule=schedule, warmup_ratio=warmup_ratio, poly_power=2.0, min_lr_ratio=0.1)
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.AdamW([{"params": params[:1], "lr": 1e-3}, {"params": params[1:], "lr": 3e-4}])
    sched = warmup_schedule(opt, total=total, **shape)
    for step in range(total + 2):  # the same values per step (or epoch) as before, bit for bit
        old = _old_lr_factor(step, total, **shape)
        assert lr_factor(step, total, **shape) == old
        assert [g["lr"] for g in opt.param_groups] == [1e-3 * old, 3e-4 * old]
        opt.step()
        sched.step()


def test_bad_optimiser_options_name_the_key():
    with pytest.raises(ValueError, match=r"optim.optimizer must be one of \['adamw', 'adam'\], got 'sgd'"):
        _from_config("optimizer=sgd")
    with pytest.raises(ValueError, match=r"optim.schedule must be one of \['cosine', 'poly', 'constant'\], got 'lin'"):
        _from_config("schedule=lin")
    with pytest.raises(ValueError, match=r"optim.schedule_interval must be one of \['step', 'epoch'\], got 'batch'"):
        make_task("cola", schedule_interval="batch")
    task = make_task("cola", schedule_interval="epoch")
    task._trainer = SimpleNamespace(max_epochs=-1, estimated_stepping_batches=10)
    with pytest.raises(ValueError, match="schedule_interval=epoch needs trainer.max_epochs"):
        task.configure_optimizers()


# --------------------------------------------------------------------------------------------- LoRA+
def _built(*overrides: str):
    """The task train.py builds for ``overrides`` (its own encoder, so every peft method works), optimiser configured."""
    from cola.harness import build_encoder

    cfg = compose_cfg(list(overrides))
    splits = SimpleNamespace(val_split="val", test_splits=["test"])
    torch.manual_seed(0)
    return _configured(build_module(cfg, build_encoder(cfg), splits))


@pytest.mark.parametrize(
    "peft,b_names",
    [
        (["peft=cola"], ("lora_B", "cola_B")),
        (["peft=cola", "peft.sharing=shared_b"], ("lora_B",)),  # B_C is B_L: one B per layer
        (["peft=lora", "peft.intra=dora"], ("lora_B",)),
        (["peft=moka"], ("moka_B",)),
    ],
    ids=["cola", "cola_shared_b", "lora_dora", "moka"],
)
def test_loraplus_puts_every_b_matrix_in_its_own_group(peft, b_names):
    task, opt, _ = _built(*peft, "optim.loraplus_ratio=16", "optim.lr_adapters=1e-4", "optim.weight_decay=0.01")
    groups = {g["name"]: g for g in opt.param_groups}
    assert list(groups) == [
        k for k in ("adapters", "adapters_B", "adapters_no_wd", "heads", "heads_no_wd") if k in groups
    ]
    assert {"adapters", "adapters_B", "heads"} <= set(groups)  # MokA has no 1-D adapter tensor (adapters_no_wd)
    names = {id(p): n for n, p in task.named_parameters()}
    in_b = {names[id(p)] for p in groups["adapters_B"]["params"]}
    trainable_b = {n for n, p in task.named_parameters() if p.requires_grad and n.rpartition(".")[2] in b_names}
    assert in_b == trainable_b and in_b  # exactly the B matrices, of every adapted layer
    assert groups["adapters_B"]["initial_lr"] == pytest.approx(1.6e-3, rel=1e-12)
    assert groups["adapters_B"]["weight_decay"] == groups["adapters"]["weight_decay"] == 0.01  # decayed as their A
    assert {groups[k]["initial_lr"] for k in ("adapters", "adapters_no_wd") if k in groups} == {1e-4}
    # DoRA magnitudes, lambdas and hypernetworks stay at lr_adapters (HF peft puts 1-D tensors in its B group)
    slow = {names[id(p)] for k in ("adapters", "adapters_no_wd") for p in groups.get(k, {"params": []})["params"]}
    assert not any(n.rpartition(".")[2] in b_names for n in slow)
    if "peft.intra=dora" in peft:
        assert any(n.endswith("lora_magnitude") for n in slow)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in task.parameters())


def test_loraplus_off_keeps_the_groups_and_rates():
    _, opt, _ = _built("peft=cola", "optim.loraplus_ratio=null")
    assert [g["name"] for g in opt.param_groups] == ["adapters", "adapters_no_wd", "heads", "heads_no_wd"]


@pytest.mark.parametrize("value", ["0", "-2", "abc", "true", ".inf"])
def test_loraplus_ratio_must_be_positive(value):
    with pytest.raises(ValueError, match=r"optim.loraplus_ratio must be a positive number .* or null \(off\), got"):
        _from_config(f"loraplus_ratio={value}")


@pytest.mark.parametrize("method", ["frozen", "full"])
def test_loraplus_ratio_needs_adapters(method):
    # raised by the task's constructor (hydra wraps it; cola.harness.setup reports the ValueError as a SetupError)
    with pytest.raises(Exception, match=rf"optim.loraplus_ratio=4 needs adapter B matrices.*peft.method='{method}'"):
        _built(f"peft={method}", "optim.loraplus_ratio=4")


@pytest.mark.parametrize(("decay_1d", "expected"), [("false", 0.0), ("true", 1e-4)])
def test_every_gate_lambda_is_undecayed_unless_decay_1d(decay_1d, expected):
    """The learned gates of the gated methods (CoLA's lambda, one per output slice) sit in the no-decay groups with
    the biases and norms; ``decay_1d=true`` decays them like every other parameter."""
    from cola.peft import GATED_METHODS, METHODS

    task, opt, _ = _from_config("weight_decay=1e-4", f"decay_1d={decay_1d}")
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    gated = [METHODS[m] for m in GATED_METHODS]
    gates = [getattr(x, m.gate) for x in task.modules() for m in gated if isinstance(x, m.layer)]
    assert len(gates) > 1  # one per adapted layer of the CoLA model
    assert {decay[id(g)] for g in gates} == {expected}
