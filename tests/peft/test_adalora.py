"""peft.intra=adalora: equality with HF peft's AdaLoRA (forward, gradients, the orthogonality regulariser, the
importance averages and which singular values each budget step keeps), the budget per slice of a fused layer, merge
with the masked Λ, save / load of the allocator state, the refusals, parameter counting and matching."""

from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from cola.peft import (
    RANKS_KEY,
    CoLAConfig,
    CoLALinear,
    LoRAConfig,
    LoRALinear,
    MoKAConfig,
    adapter_params_per_layer,
    inject_adapters,
    intra_after_optimizer_step,
    intra_budget,
    intra_groups,
    intra_prepare,
    intra_training_losses,
    load_adapters,
    mark_only_adapters_trainable,
    match_lora,
    save_adapters,
)
from cola.peft.methods import ParamMatchedConfig
from cola.peft.state import ranks_path

D_IN, D_H, D_OUT, R, TARGET = 24, 20, 18, 6, 3
# HF peft's AdaLoraConfig and ours: the same schedule (tinit 2, tfinal 3, an allocation every 2nd step, 12 steps)
TOTAL = 12
SCHEDULE = dict(tinit=2, tfinal=3, delta_t=2, beta1=0.85, beta2=0.85, orth_reg_weight=0.5)
HF_SCHEDULE = dict(tinit=2, tfinal=3, deltaT=2, beta1=0.85, beta2=0.85, orth_reg_weight=0.5, total_step=TOTAL)


class _Net(nn.Module):
    """Two adapted layers (one budget shared by both); with a target it returns an output carrying ``loss``, which
    is what HF's ``AdaLoraModel.forward`` adds its regulariser to."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(D_IN, D_H)
        self.fc2 = nn.Linear(D_H, D_OUT)

    def forward(self, x, y=None):
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out if y is None else types.SimpleNamespace(loss=(out - y).square().mean(), out=out)


def _hf_pair():
    """HF peft's AdaLoRA and ours on the same weights; ours gets HF's P, Q (normal draws of another RNG stream)."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ref, ours = _Net(), _Net()
    ours.load_state_dict(ref.state_dict())
    hf = peft.get_peft_model(
        ref,
        peft.AdaLoraConfig(init_r=R, target_r=TARGET, lora_alpha=16, target_modules=["fc1", "fc2"], **HF_SCHEDULE),
    )
    cfg = LoRAConfig(rank=R, alpha=16, intra="adalora", adalora={"target_rank": TARGET, **SCHEDULE})
    inject_adapters(ours, cfg, ["fc1", "fc2"])
    mark_only_adapters_trainable(ours)
    pairs = []  # (HF tensor, ours, layer, key)
    for name in ("fc1", "fc2"):
        hl, ml = getattr(hf.base_model.model, name), getattr(ours, name)
        for key in "ABE":
            pairs.append((getattr(hl, f"lora_{key}")["default"], getattr(ml, f"lora_{key}"), name, key))
    for theirs, mine, _, key in pairs:  # the init is HF's: Λ zero, P and Q normal(0, 0.02)
        if key == "E":
            assert torch.equal(mine, theirs) and not mine.any()
        else:
            # 144+ draws each: the sample std is within ~6 % of 0.02 (1 / sqrt(2 n)); 50 % leaves no flake
            assert abs(float(mine.detach().std()) - 0.02) < 0.01 and abs(float(theirs.detach().std()) - 0.02) < 0.01
    with torch.no_grad():
        for theirs, mine, _, _ in pairs:
            mine.copy_(theirs)
    return hf, ours, pairs


def test_equals_hf_peft_adalora_through_the_budget_schedule():
    """12 AdamW steps of HF's AdaLoRA (``update_and_allocate(step)`` after each) and ours
    (:func:`intra_after_optimizer_step`) on the same inputs: warm-up (steps 0-2), cubic budget decrease with an
    allocation every 2nd step (4, 6, 8), the final allocation at step 9 = 12 - tfinal, then fixed masks.

    Tolerances: every output is a float32 sum of <= 24 products of size <= ~1, i.e. a few ulps (2^-24 ~ 6e-8) apart
    when the association differs (ours scales before the up-projection, HF after); 1e-5 bounds that with margin. AdamW
    turns a gradient difference of relative size d into an update difference of about lr * d = 2e-2 * 1e-6 per step,
    so parameters stay within 1e-6 over 12 steps (checked at 1e-5). The moving averages are products of a parameter
    and a gradient (~1e-3): checked at 1e-9 absolute, 1e-4 relative. The kept singular values are compared exactly
    (the scores of neighbouring triplets differ by far more than these tolerances for this seed).
    """
    hf, ours, pairs = _hf_pair()
    assert ours.fc1.scaling == pytest.approx(16 / (R + 1e-5), rel=1e-12)  # HF: scaling / (ranknum + 1e-5)
    groups = intra_groups(ours)
    intra_prepare(groups, TOTAL)
    lr = 2e-2
    opt_hf = torch.optim.AdamW([t for t, *_ in pairs], lr=lr)
    opt_ours = torch.optim.AdamW([m for _, m, *_ in pairs], lr=lr)
    allocator = hf.base_model.rankallocator
    g = torch.Generator().manual_seed(3)
    masked_steps = []
    for step in range(TOTAL):
        x, y = torch.randn(8, 5, D_IN, generator=g), torch.randn(8, 5, D_OUT, generator=g)
        out_hf = hf.base_model(x, y)  # AdaLoraModel.forward: the task loss plus orth_reg_weight * R
        out_ours = ours(x, y)
        reg = intra_training_losses(groups)["orth_reg"]
        torch.testing.assert_close(out_ours.out, out_hf.out, rtol=1e-5, atol=1e-5)
        # HF's regulariser is the difference its forward adds to the loss (the same MSE on both sides)
        torch.testing.assert_close(reg, out_hf.loss - out_ours.loss, rtol=1e-5, atol=1e-6)
        (out_ours.loss + reg).backward()
        out_hf.loss.backward()
        for theirs, mine, name, key in pairs:
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-5, atol=1e-6, msg=f"{name}.lora_{key}")
        opt_hf.step()
        opt_ours.step()
        hf.base_model.update_and_allocate(step)
        intra_after_optimizer_step(groups, step, TOTAL)
        for theirs, mine, name, key in pairs:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5, msg=f"{name}.lora_{key} after step {step}")
            if allocator.exp_avg_ipt:  # HF clears them at the final allocation, as we do (zeros)
                layer = getattr(ours, name)
                for mine_avg, theirs_avg in (
                    (getattr(layer, f"lora_adalora_ipt_{key}"), allocator.exp_avg_ipt[f"{name}.lora_{key}.default"]),
                    (getattr(layer, f"lora_adalora_unc_{key}"), allocator.exp_avg_unc[f"{name}.lora_{key}.default"]),
                ):
                    torch.testing.assert_close(mine_avg, theirs_avg, rtol=1e-4, atol=1e-9)
        pattern = hf.peft_config["default"].rank_pattern
        if pattern:
            for name in ("fc1", "fc2"):
                kept = getattr(ours, name).lora_adalora_mask.tolist()
                assert kept == pattern[f"{name}.lora_E.default"], f"{name} after step {step}"
            if step in (4, 6, 8, 9):
                masked_steps.append(step)
        opt_hf.zero_grad()
        opt_ours.zero_grad()
    assert masked_steps == [4, 6, 8, 9]  # the allocations happened where the schedule says, on both sides
    kept = [ours.fc1.lora_adalora_mask, ours.fc2.lora_adalora_mask]
    assert sum(int(k.sum()) for k in kept) == 2 * TARGET  # the target budget: target rank x matrices
    for layer in (ours.fc1, ours.fc2):  # Λ of the dropped triplets is exactly 0 (re-masked after every step)
        assert not layer.lora_E[~layer.lora_adalora_mask].any()
    assert allocator.exp_avg_ipt == {}  # HF drops its averages at the final allocation; ours are zeroed
    for layer in (ours.fc1, ours.fc2):
        assert not any(
            t.any() for n, t in layer.named_buffers() if n.startswith(("lora_adalora_ipt", "lora_adalora_unc"))
        )
    assert int(ours.fc1.lora_adalora_step) == TOTAL - 1


def test_budget_of_a_fused_layer_is_per_slice():
    """A fused layer (S = 3) is S matrices of the budget: slice k of it allocates as a layer of rows k would, with
    the budget shared by the three (the scores of one slice are those of its rows of Q, Λ and P only)."""
    torch.manual_seed(0)
    cfg = LoRAConfig(rank=4, alpha=8, intra="adalora", adalora={"target_rank": 2, "tinit": 0, "tfinal": 1})
    fused = LoRALinear(nn.Linear(D_IN, 3 * 6), cfg, out_splits=3)
    parts = [LoRALinear(nn.Linear(D_IN, 6), cfg) for _ in range(3)]
    with torch.no_grad():
        for k, part in enumerate(parts):
            part.base_layer.weight.copy_(fused.base_layer.weight[6 * k : 6 * (k + 1)])
            part.base_layer.bias.copy_(fused.base_layer.bias[6 * k : 6 * (k + 1)])
            part.lora_A.copy_(fused.lora_A[4 * k : 4 * (k + 1)])
            part.lora_B.copy_(fused.lora_B[6 * k : 6 * (k + 1)])
    x = torch.randn(4, 5, D_IN)
    for step in range(3):  # two budget steps (0, 1), then the final allocation at 2 = 3 - tfinal
        for layers in ([fused], parts):
            for m in layers:
                m.zero_grad()
            torch.cat([m(x) for m in layers], dim=-1).sin().sum().backward()
            with torch.no_grad():
                for m in layers:
                    for p in m.parameters():
                        if p.grad is not None:
                            p.sub_(0.1 * p.grad)
            intra_after_optimizer_step({cfg.variant: [(str(i), m) for i, m in enumerate(layers)]}, step, 3)
        torch.testing.assert_close(fused(x), torch.cat([m(x) for m in parts], -1), rtol=1e-5, atol=1e-6)
    assert fused.intra_ranks() == [p.intra_ranks()[0] for p in parts] and sum(fused.intra_ranks()) == 3 * 2
    assert fused.lora_adalora_mask.tolist() == sum((p.lora_adalora_mask.tolist() for p in parts), [])


def _trained(cls: str, steps: int = 6):
    """A CoLA (or LoRA) AdaLoRA model run through its whole schedule (final phase from step 4 = 6 - 2)."""
    torch.manual_seed(0)
    opts = {"target_rank": 2, "tinit": 1, "tfinal": 2}
    if cls == "cola":
        cfg = CoLAConfig(rank=4, alpha=8, reduction=4, intra="adalora", adalora=opts)
        model = nn.Sequential(CoLALinear(nn.Linear(D_IN, 18), cfg, context_dim=8, out_splits=3))
        model[0].set_condition(torch.randn(2, 8))
    else:
        cfg = LoRAConfig(rank=4, alpha=8, intra="adalora", adalora=opts)
        model = nn.Sequential(LoRALinear(nn.Linear(D_IN, 18), cfg, out_splits=3))
    mark_only_adapters_trainable(model)
    groups = intra_groups(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    x = torch.randn(2, 5, D_IN)
    for step in range(steps):
        loss = model(x).sin().sum() + sum(intra_training_losses(groups).values())
        loss.backward()
        opt.step()
        intra_after_optimizer_step(groups, step, steps)
        opt.zero_grad()
    return model, x


@pytest.mark.parametrize("cls", ["lora", "cola"])
def test_merge_with_the_masked_singular_values_equals_unmerged(cls):
    model, x = _trained(cls)
    layer = model[0]
    assert sum(layer.intra_ranks()) == 3 * 2 and layer.intra_ranks() != [4, 4, 4]
    before = model(x)
    delta = layer.delta_weight().detach()
    for k, kept in enumerate(layer.intra_ranks()):  # the merged update of slice k has exactly its kept rank
        assert torch.linalg.matrix_rank(delta[6 * k : 6 * (k + 1)]) == kept
    layer.merge()
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_adapter_file_carries_the_allocator_state_and_the_final_ranks(tmp_path):
    src, x = _trained("cola")
    path = save_adapters(tmp_path / "adapter.safetensors", src, config={"method": "cola"})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        names = set(f.keys())
    budget = json.loads(meta[RANKS_KEY])
    assert budget == json.loads(ranks_path(path).read_text()) == intra_budget(intra_groups(src))
    assert budget["ranks"] == {"0": src[0].intra_ranks()} and budget["budget"] == {
        "initial": 12,
        "target": 6,
        "final": 6,
    }
    cost = D_IN + 6 + 1  # a triplet: a row of Q, a column of P's slice, one singular value
    assert budget["intra_params"] == {"initial": 12 * cost, "target": 6 * cost, "final": 6 * cost}
    assert {"0.lora_E", "0.lora_adalora_mask", "0.lora_adalora_step", "0.lora_adalora_ipt_A"} <= names
    dst, _ = _trained("cola", steps=0)  # the same init, untrained
    load_adapters(path, dst)
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    for name, t in src[0].named_buffers():
        assert torch.equal(getattr(dst[0], name), t), name
    assert int(dst[0].lora_adalora_step) == 5


def test_refusals_and_option_checks_name_the_key():
    with pytest.raises(
        ValueError, match=r"peft.intra='adalora' does not apply to MokA \(use lora or rslora\).*B is shared"
    ):
        MoKAConfig(intra="adalora")
    with pytest.raises(ValueError, match=r"peft.intra='adalora' cannot be combined with peft.sharing='full'.*P"):
        CoLAConfig(intra="adalora", sharing="full")
    CoLAConfig(intra="adalora", sharing="shared_a", adalora={"target_rank": 8})  # A_C = Q is allowed
    for opts, pattern in (
        ({"target_rank": 9}, r"peft.adalora.target_rank must be an integer in \[1, peft.rank=8\].*got 9"),
        ({"tinit": 1.5}, r"peft.adalora.tinit must be .*got 1.5"),
        ({"beta1": 1.0}, r"peft.adalora.beta1 must be a float in \(0, 1\), got 1.0"),
        ({"orth_reg_weight": -1}, r"orth_reg_weight must be a number >= 0, got -1"),
        ({"deltaT": 2}, r"peft.adalora has unknown key\(s\) \['deltaT'\]; valid keys are \['target_rank'"),
    ):
        with pytest.raises(ValueError, match=pattern):
            LoRAConfig(rank=8, intra="adalora", adalora=opts)
    layer = LoRALinear(nn.Linear(4, 4), LoRAConfig(rank=2, intra="adalora", adalora={"tinit": 3, "tfinal": 0.5}))
    with pytest.raises(
        ValueError, match=r"tinit=3 \(3 steps\) and peft.adalora.tfinal=0.5 \(2 steps\) leave no budget"
    ):
        intra_prepare(intra_groups(nn.Sequential(layer)), 5)


def test_parameters_and_the_param_matched_lora_on_the_final_budget():
    cfg = CoLAConfig(rank=8, reduction=4, intra="adalora")
    kw = dict(in_features=D_IN, out_features=3 * D_OUT, context_dim=32, out_splits=3)
    plain = adapter_params_per_layer(CoLAConfig(rank=8, reduction=4), **kw)
    assert adapter_params_per_layer(cfg, **kw) == plain + 3 * 8  # + Λ, one per triplet of each slice
    assert cfg.variant.final_rank(cfg) == 5  # round(2 * 8 / 3): HF's default ratio 8 of 12
    cola = ParamMatchedConfig(rank=8, alpha=4, reduction=16, intra="adalora", adalora={"target_rank": 4})
    shapes = [(768, 2304, 3), (768, 768, 1), (768, 3072, 1), (3072, 768, 1)] * 12
    matched = match_lora(cola, [(cola, i, o, 768, s) for i, o, s in shapes])
    lora = matched.config
    assert lora.intra == "adalora" and lora.scaling == pytest.approx(cola.scaling, rel=1e-12)
    assert matched.basis == "final budget" and "matched on the final budget" in matched.describe()

    def at(rank, intra_rank):
        c = LoRAConfig(rank=rank, intra="adalora")
        return sum(
            c.params_per_layer(in_features=i, out_features=o, out_splits=s, intra_rank=intra_rank) for i, o, s in shapes
        )

    target = lora.variant.final_rank(lora)
    assert 4 <= target <= lora.rank and at(lora.rank, target) == matched.params_lora
    for other in (target - 1, target + 1):  # the closest final budget
        assert abs(matched.params_lora - matched.params_cola) <= abs(at(lora.rank, other) - matched.params_cola)
    params_cola, params_lora = matched.initial
    assert at(lora.rank, lora.rank) == params_lora
    for other in (lora.rank - 1, lora.rank + 1):  # and the closest initial budget
        assert abs(params_lora - params_cola) <= abs(at(other, other) - params_cola)


def test_config_defaults_and_checkpoints_written_before_the_key():
    """``peft.adalora`` in configs/peft/*.yaml is :class:`AdaLoRAOptions`' defaults, which is also what a checkpoint
    written before the key existed is taken to have had (so it still fits a run with the defaults)."""
    from dataclasses import asdict

    from cola.peft import AdaLoRAOptions
    from tests.conftest import compose_cfg, resolve_all
    from tests.peft.test_variants import _task

    for method in ("lora", "cola", "lora_param_matched"):
        assert resolve_all(compose_cfg([f"peft={method}"]))["peft"]["adalora"] == asdict(AdaLoRAOptions())
    task = _task("lora", method="lora")
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    ckpt["cola_peft_config"].pop("adalora")
    task.check_checkpoint_fits(dict(ckpt), exact=True)
