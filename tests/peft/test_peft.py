"""cola.peft: numerical identities of the adapter layers, injection, trainability and adapter state."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from cola.peft import (
    METHODS,
    CoLAConfig,
    CoLALinear,
    HyperNetwork,
    LoRAConfig,
    LoRALinear,
    MoKAConfig,
    MoKALinear,
    adapter_params_per_layer,
    adapter_state_dict,
    config_from_dict,
    count_parameters,
    inject_adapters,
    load_adapter_state_dict,
    load_adapters,
    mark_only_adapters_trainable,
    merge_adapters,
    param_matched_lora_rank,
    save_adapters,
    stacked_hypernet_forward,
    unmerge_adapters,
)
from tests.conftest import perturb

SHARINGS = ["none", "shared_a", "shared_b", "full"]
D_IN, D_OUT, D_C, R = 24, 18, 32, 4


def _base(d_in=D_IN, d_out=D_OUT, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def _cola_reference(layer: CoLALinear, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The CoLA layer of docs/method.md#cola-layer written independently with einsum, slice by slice."""
    cfg, s, r = layer.config, layer.out_splits, layer.config.rank
    w, b = layer.base_layer.weight, layer.base_layer.bias
    a_l, b_l = layer.lora_A, layer.lora_B
    a_c = a_l if cfg.sharing in ("shared_a", "full") else layer.cola_A
    b_c = b_l if cfg.sharing in ("shared_b", "full") else layer.cola_B
    nets = [layer.cola_hypernet] if s == 1 else list(layer.cola_hypernet)
    out = torch.einsum("bni,oi->bno", x, w) + b
    o = D_OUT // s if s > 1 else layer.out_features
    pieces = []
    for k in range(s):
        net = nets[k]
        h = net.norm1(torch.nn.functional.gelu(torch.einsum("bd,hd->bh", c, net.fc1.weight) + net.fc1.bias))
        flat = torch.einsum("bh,kh->bk", h, net.fc2.weight) + net.fc2.bias
        phi = net.norm2(flat.reshape(-1, r, r))
        ak, ack = a_l[k * r : (k + 1) * r], a_c[k * r : (k + 1) * r]
        bk, bck = b_l[k * o : (k + 1) * o], b_c[k * o : (k + 1) * o]
        intra = layer.scaling * torch.einsum("or,ri,bni->bno", bk, ak, x)
        inter = layer.cola_lambda[k] * torch.einsum("op,bpq,qi,bni->bno", bck, phi, ack, x)
        pieces.append(intra + inter)
    return out + torch.cat(pieces, dim=-1)


@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("splits", [1, 3])
def test_cola_matches_spec_formula(sharing, splits):
    base = _base(d_out=D_OUT)
    layer = CoLALinear(
        base, CoLAConfig(rank=R, alpha=8, sharing=sharing, reduction=4), context_dim=D_C, out_splits=splits
    )
    perturb(layer)
    x, c = torch.randn(3, 5, D_IN), torch.randn(3, D_C)
    layer.set_condition(c)
    torch.testing.assert_close(layer(x), _cola_reference(layer, x, c), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sharing", SHARINGS)
def test_cola_zero_init_is_base_layer(sharing):
    base = _base()
    layer = CoLALinear(base, CoLAConfig(rank=R, sharing=sharing, reduction=4), context_dim=D_C, out_splits=3)
    x = torch.randn(2, 7, D_IN)
    layer.set_condition(torch.randn(2, D_C))
    torch.testing.assert_close(layer(x), base(x), atol=0, rtol=0)


def test_lambda_and_parameter_names_and_init():
    cfg = CoLAConfig(rank=4, alpha=8)
    layer = CoLALinear(_base(), cfg, context_dim=D_C)
    names = {n for n, _ in layer.named_parameters() if not n.startswith("base_layer")}
    assert {"lora_A", "lora_B", "cola_A", "cola_B", "cola_lambda"} <= names
    assert {"cola_hypernet.fc1.weight", "cola_hypernet.norm1.weight", "cola_hypernet.fc2.weight"} <= names
    assert layer.cola_lambda.shape == (1,) and layer.cola_lambda.item() == pytest.approx(2.0)  # alpha / r
    assert layer.lora_A.shape == (4, D_IN) and layer.lora_B.shape == (D_OUT, 4)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.cola_B) == 0
    bound = 1 / math.sqrt(D_IN)  # kaiming_uniform(a=sqrt(5)) bound
    assert layer.lora_A.abs().max() <= bound and layer.cola_A.abs().max() <= bound
    assert layer.cola_hypernet.fc1.out_features == D_C // 16
    assert CoLALinear(_base(), CoLAConfig(lambda_init=0.1), context_dim=D_C).cola_lambda.item() == pytest.approx(0.1)
    shared = CoLALinear(_base(), CoLAConfig(rank=4, sharing="full"), context_dim=D_C)
    assert not hasattr(shared, "cola_A") and not hasattr(shared, "cola_B")
    fused = CoLALinear(_base(d_out=18), CoLAConfig(rank=4), context_dim=D_C, out_splits=3)
    assert fused.lora_A.shape == (12, D_IN) and fused.cola_lambda.shape == (3,) and len(fused.cola_hypernet) == 3


@pytest.mark.parametrize("sharing", SHARINGS)
def test_fused_equals_three_split_layers(sharing):
    cfg = CoLAConfig(rank=R, alpha=4, sharing=sharing, reduction=4)
    fused = CoLALinear(_base(d_out=18), cfg, context_dim=D_C, out_splits=3)
    perturb(fused)
    x, c = torch.randn(2, 6, D_IN), torch.randn(2, D_C)
    fused.set_condition(c)
    outs = []
    for k in range(3):
        lin = nn.Linear(D_IN, 6)
        with torch.no_grad():
            lin.weight.copy_(fused.base_layer.weight[k * 6 : (k + 1) * 6])
            lin.bias.copy_(fused.base_layer.bias[k * 6 : (k + 1) * 6])
        part = CoLALinear(lin, cfg, context_dim=D_C)
        with torch.no_grad():
            part.lora_A.copy_(fused.lora_A[k * R : (k + 1) * R])
            part.lora_B.copy_(fused.lora_B[k * 6 : (k + 1) * 6])
            if not fused.share_a:
                part.cola_A.copy_(fused.cola_A[k * R : (k + 1) * R])
            if not fused.share_b:
                part.cola_B.copy_(fused.cola_B[k * 6 : (k + 1) * 6])
            part.cola_lambda.copy_(fused.cola_lambda[k : k + 1])
        part.cola_hypernet.load_state_dict(fused.cola_hypernet[k].state_dict())
        part.set_condition(c)
        outs.append(part(x))
    torch.testing.assert_close(fused(x), torch.cat(outs, dim=-1), atol=1e-5, rtol=1e-5)


def test_stacked_hypernet_equals_separate():
    nets = nn.ModuleList([HyperNetwork(D_C, R, reduction=4) for _ in range(3)])
    for n in nets:
        perturb(n, seed=3, adapters_only=False)
    c = torch.randn(5, D_C)
    torch.testing.assert_close(
        stacked_hypernet_forward(nets, c), torch.stack([n(c) for n in nets]), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("cls", ["lora", "cola"])
@pytest.mark.parametrize("splits", [1, 3])
def test_merge_unmerge_exact_and_idempotent(cls, splits):
    base = _base(d_out=18)
    w0 = base.weight.detach().clone()
    if cls == "lora":
        layer = LoRALinear(base, LoRAConfig(rank=R, alpha=16), out_splits=splits)
    else:
        layer = CoLALinear(base, CoLAConfig(rank=R, reduction=4), context_dim=D_C, out_splits=splits)
        layer.set_condition(torch.randn(2, D_C))
    perturb(layer)
    x = torch.randn(2, 5, D_IN)
    ref = layer(x)
    layer.merge()
    layer.merge()  # idempotent
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
    assert not torch.equal(layer.base_layer.weight, w0)
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-5, rtol=0)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
    layer.train()
    layer.eval()  # merging is never a side effect of train()/eval()
    assert layer.merged is False


def test_merge_refuses_non_finite():
    layer = LoRALinear(_base(), LoRAConfig(rank=R))
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
    w0 = layer.base_layer.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="non-finite"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, w0) and not layer.merged


def test_lora_equals_hf_peft():
    peft = pytest.importorskip("peft")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(D_IN, D_OUT)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    ref = Net()
    ours = Net()
    ours.load_state_dict(ref.state_dict())
    hf = peft.get_peft_model(ref, peft.LoraConfig(r=R, lora_alpha=16, target_modules=["proj"], lora_dropout=0.0))
    report = inject_adapters(ours, LoRAConfig(rank=R, alpha=16), ["proj"])
    hf_layer = hf.base_model.model.proj
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(R, D_IN, generator=g), torch.randn(D_OUT, R, generator=g)
    with torch.no_grad():
        hf_layer.lora_A["default"].weight.copy_(a)
        hf_layer.lora_B["default"].weight.copy_(b)
        report.modules["proj"].lora_A.copy_(a)
        report.modules["proj"].lora_B.copy_(b)
    # In float64: both compute W x + b + s B (A x) (s = alpha / r = 4) from the same operands, perhaps summing in
    # another order. Each output then carries at most ~(D_IN + R + 3) u sum|terms| of rounding per side (dot-product
    # bound, u = 2**-53; the terms' magnitudes below), ~1e-12 for outputs of up to ~160; a wrong scale, slice or
    # transpose is off by O(1). (In float32 one ulp at 160 is 1.5e-5: a fixed 1e-6 would test the summation order.)
    ours.double(), hf.double()
    x = torch.randn(3, 4, D_IN, dtype=torch.float64)
    w, bias, s = ours.proj.base_layer.weight, ours.proj.base_layer.bias, 16 / R
    terms = x.abs() @ w.abs().T + bias.abs() + s * (x.abs() @ a.double().abs().T) @ b.double().abs().T
    bound = 2 * (D_IN + R + 3) * 2.0**-53 * terms
    with torch.no_grad():
        diff = (ours(x) - hf(x)).abs()
    assert (diff <= bound).all(), (diff.max(), bound.min())


def test_lora_split_fused_slices_are_independent():
    base = _base(d_out=18)
    layer = LoRALinear(base, LoRAConfig(rank=R, alpha=4), out_splits=3)
    perturb(layer)
    x = torch.randn(2, 3, D_IN)
    expected = base(x) + torch.cat(
        [x @ layer.lora_A[k * R : (k + 1) * R].t() @ layer.lora_B[k * 6 : (k + 1) * 6].t() for k in range(3)], -1
    )
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    unsplit = LoRALinear(_base(d_out=18), LoRAConfig(rank=R, split_fused=False), out_splits=3)
    assert unsplit.lora_A.shape == (R, D_IN)


def test_windowed_batch_and_grid_input():
    # The two calls run the hypernetwork on batches of 2 and 6 conditions. A float32 GEMM may pick another
    # blocking (summation order) for another batch size, and the r x r LayerNorm divides those last-bit
    # differences by the std of 16 values: ~3e-6 on some CPUs. That is rounding, not a wrong repeat, so the
    # identity is checked in float64, where the same reordering bounds the difference at ~1e-15 relative.
    layer = CoLALinear(_base(), CoLAConfig(rank=R, reduction=4), context_dim=D_C).double()
    perturb(layer)
    c = torch.randn(2, D_C, dtype=torch.float64)
    layer.set_condition(c)
    x = torch.randn(6, 3, 2, D_IN, dtype=torch.float64)  # 3 windows per sample, (B*k, H, W, d)
    out = layer(x)
    assert out.shape == (6, 3, 2, D_OUT)
    layer.set_condition(c.repeat_interleave(3, dim=0))
    torch.testing.assert_close(layer(x), out, atol=1e-12, rtol=1e-12)
    # and the windows of one sample share its Phi: sample 0's condition repeated reproduces rows 0-2
    layer.set_condition(c[:1])
    torch.testing.assert_close(layer(x[:3]), out[:3], atol=1e-12, rtol=1e-12)


def test_condition_controls():
    cfg = dict(rank=R, reduction=4)
    x, c = torch.randn(3, 4, D_IN), torch.randn(3, D_C)
    pooled = CoLALinear(_base(), CoLAConfig(**cfg), context_dim=D_C)
    perturb(pooled)
    variants = {}
    for mode in ["shuffled", "zero", "random_frozen"]:
        layer = CoLALinear(_base(), CoLAConfig(condition=mode, **cfg), context_dim=D_C)
        layer.load_state_dict(pooled.state_dict())
        layer.set_condition(c)
        variants[mode] = layer
    pooled.set_condition(torch.roll(c, -1, 0))
    torch.testing.assert_close(variants["shuffled"](x), pooled(x))
    pooled.set_condition(torch.zeros_like(c))
    torch.testing.assert_close(variants["zero"](x), pooled(x))
    rf = variants["random_frozen"]
    mark_only_adapters_trainable(rf)
    assert not any(p.requires_grad for p in rf.cola_hypernet.parameters())
    assert rf.cola_A.requires_grad and rf.cola_lambda.requires_grad
    with pytest.raises(ValueError, match="shuffled"):
        variants["shuffled"].set_condition(c[:1])
        variants["shuffled"](x[:1])


def test_missing_condition_raises_with_name():
    model = nn.Sequential(nn.Linear(D_IN, D_OUT))
    inject_adapters(model, CoLAConfig(rank=R, reduction=4), ["0"], context_dim=D_C)
    with pytest.raises(RuntimeError, match="'?0'?.*without a condition|0: CoLALinear ran without"):
        model(torch.randn(1, D_IN))
    with pytest.raises(ValueError, match="condition must have shape"):
        model[0].set_condition(torch.randn(2, D_C + 1))


def test_gradients_reach_exactly_the_trainable_parameters():
    model = nn.Sequential(nn.Linear(D_IN, 18), nn.GELU(), nn.Linear(18, D_OUT))
    report = inject_adapters(model, CoLAConfig(rank=R, reduction=4), ["0", "2"], context_dim=D_C, out_splits={"0": 3})
    mark_only_adapters_trainable(model)
    for layer in report.modules.values():
        perturb(layer)
        layer.set_condition(torch.randn(2, D_C))
    model(torch.randn(2, 3, D_IN)).square().sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad, n
        if p.requires_grad:
            assert torch.count_nonzero(p.grad) > 0, n
    assert not any(p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)


def _moka_reference(layer: MoKALinear, x, y, mask):
    s, r = layer.scaling, layer.config.rank
    u = s * torch.einsum("bni,ri->bnr", x, layer.moka_A)
    v = s * torch.einsum("bmj,rj->bmr", y, layer.moka_A_other)
    scores = torch.einsum("bnr,bmr->bnm", u, v) / math.sqrt(r)
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    cross = torch.einsum("bnm,bmr->bnr", scores.softmax(-1), v)
    return layer.base_layer(x) + torch.einsum("bnr,or->bno", u + layer.config.lambda_cross * cross, layer.moka_B)


def test_moka_matches_formula_and_masks_keys():
    layer = MoKALinear(_base(), MoKAConfig(rank=R, alpha=16, dropout=0.0), context_dim=D_C)
    x, y = torch.randn(2, 5, D_IN), torch.randn(2, 7, D_C)
    layer.set_context(y)
    torch.testing.assert_close(layer(x), layer.base_layer(x))  # zero init
    perturb(layer)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    layer.set_context(y, mask)
    ref = _moka_reference(layer, x, y, mask)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
    y2 = y.clone()
    y2[1, 3:] = 100.0  # padded keys must not matter
    layer.set_context(y2, mask)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="no real key"):
        layer.set_context(y, torch.zeros(2, 7, dtype=torch.bool))
        layer(x)
    with pytest.raises(ValueError, match="bool"):
        layer.set_context(y, mask.long())
    layer.set_context(None)
    with pytest.raises(RuntimeError, match="without context"):
        layer(x)


def test_moka_without_cross_term_ignores_context():
    layer = MoKALinear(_base(), MoKAConfig(rank=R), context_dim=None).eval()  # default dropout 0.05
    assert not hasattr(layer, "moka_A_other")
    perturb(layer)
    x = torch.randn(2, 3, D_IN)
    layer.set_context(torch.randn(2, 4, 5))
    expected = layer.base_layer(x) + layer.scaling * x @ layer.moka_A.t() @ layer.moka_B.t()
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_dropout_paths_are_independent_and_off_in_eval():
    layer = CoLALinear(_base(), CoLAConfig(rank=R, dropout=0.5, reduction=4), context_dim=D_C)
    perturb(layer)
    x, c = torch.randn(2, 5, D_IN), torch.randn(2, D_C)
    layer.set_condition(c)
    layer.eval()
    torch.testing.assert_close(layer(x), _cola_reference(layer, x, c), atol=1e-5, rtol=1e-5)
    layer.train()
    torch.manual_seed(0)
    a = layer(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, layer(x))


# ------------------------------------------------------------------------- injection and state
class TinyBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(16, 48)
        self.attn.proj = nn.Linear(16, 16)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(16, 32)
        self.mlp.fc2 = nn.Linear(32, 16)

    def forward(self, x):
        q, k, v = self.attn.qkv(x).chunk(3, -1)
        x = x + self.attn.proj(torch.softmax(q @ k.transpose(1, 2), -1) @ v)
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(x)))


TARGETS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(TinyBlock(), TinyBlock())


@pytest.mark.parametrize(
    "config",
    [
        LoRAConfig(rank=4),
        CoLAConfig(rank=4, reduction=2),
        CoLAConfig(rank=4, sharing="full", reduction=2),
        MoKAConfig(),
        LoRAConfig(rank=4, intra="dora"),
        LoRAConfig(rank=4, intra="pissa"),
        CoLAConfig(rank=4, reduction=2, intra="dora"),
        CoLAConfig(rank=4, reduction=2, sharing="shared_a", intra="pissa"),
        MoKAConfig(intra="rslora"),
    ],
    ids=["lora", "cola", "cola_full", "moka", "lora_dora", "lora_pissa", "cola_dora", "cola_shared_a_pissa", "moka_rs"],
)
def test_inject_report_counts(config):
    model = _tiny_model()
    report = inject_adapters(model, config, TARGETS, context_dim=8, out_splits={"attn.qkv": 3})
    assert set(report.modules) == {f"{i}.{t}" for i in range(2) for t in TARGETS}
    assert report.per_target == {t: 2 for t in TARGETS}
    shapes = [(16, 48, 3), (16, 16, 1), (16, 32, 1), (32, 16, 1)] * 2
    expected = sum(
        adapter_params_per_layer(config, in_features=i, out_features=o, context_dim=8, out_splits=s)
        for i, o, s in shapes
    )
    assert report.params_added == expected
    n_trainable = mark_only_adapters_trainable(model)
    assert n_trainable == expected == count_parameters(model)["trainable"] == count_parameters(model)["adapter"]


def test_inject_bad_target_names_closest_modules():
    with pytest.raises(ValueError, match=r"'attn\.qkvv' matches no nn\.Linear.*attn\.qkv"):
        inject_adapters(_tiny_model(), LoRAConfig(), ["attn.qkvv"])
    with pytest.raises(ValueError, match="context_dim"):
        inject_adapters(_tiny_model(), CoLAConfig(), ["attn.proj"])
    with pytest.raises(ValueError, match="rank=32 exceeds"):
        inject_adapters(_tiny_model(), LoRAConfig(rank=32), ["attn.proj"])


def test_include_filter_selects_blocks():
    report = inject_adapters(_tiny_model(), LoRAConfig(rank=2), ["mlp.fc1"], include=lambda n: n.startswith("1."))
    assert list(report.modules) == ["1.mlp.fc1"]


def test_merge_adapters_whole_model():
    model = _tiny_model()
    report = inject_adapters(model, LoRAConfig(rank=4), TARGETS, out_splits={"attn.qkv": 3})
    for m in report.modules.values():
        perturb(m)
    x = torch.randn(2, 5, 16)
    ref = model(x)
    assert merge_adapters(model) == 8
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert unmerge_adapters(model) == 8
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


def test_state_round_trip_safetensors(tmp_path):
    cfg = CoLAConfig(rank=4, reduction=2)
    src, dst = _tiny_model(0), _tiny_model(0)
    rep = inject_adapters(src, cfg, TARGETS, context_dim=8, out_splits={"attn.qkv": 3})
    rep2 = inject_adapters(dst, cfg, TARGETS, context_dim=8, out_splits={"attn.qkv": 3})
    for m in rep.modules.values():
        perturb(m, seed=7)
    c, x = torch.randn(2, 8), torch.randn(2, 5, 16)
    for m in list(rep.modules.values()) + list(rep2.modules.values()):
        m.set_condition(c)
    path = save_adapters(tmp_path / "adapter.safetensors", src, config={"method": "cola", **cfg.to_dict()})
    assert not list(tmp_path.glob("*.tmp"))
    load_adapters(path, dst, config={"method": "cola", **cfg.to_dict()})
    torch.testing.assert_close(dst(x), src(x), atol=0, rtol=0)
    state = adapter_state_dict(src)
    assert all(("lora_" in k or "cola_" in k) for k in state) and not any("base_layer" in k for k in state)
    with pytest.raises(ValueError, match="rank: saved 4 != current 8"):
        load_adapters(path, dst, config={"method": "cola", **CoLAConfig(rank=8, reduction=2).to_dict()})
    other = _tiny_model(0)
    inject_adapters(other, CoLAConfig(rank=2, reduction=2), TARGETS, context_dim=8, out_splits={"attn.qkv": 3})
    with pytest.raises(ValueError, match="another rank or sharing"):
        load_adapter_state_dict(other, state)
    lora = _tiny_model(0)
    inject_adapters(lora, LoRAConfig(rank=4), TARGETS, out_splits={"attn.qkv": 3})
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state_dict(lora, {k: v for k, v in state.items() if "lora_" in k} | {"x.cola_A": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match="adapter file not found"):
        load_adapters(tmp_path / "nope.safetensors", dst)


def test_param_matched_rank_within_one_step():
    cfg = CoLAConfig(rank=8, reduction=16)
    shapes = [(768, 2304, 3), (768, 768, 1), (768, 3072, 1), (3072, 768, 1)] * 12
    cola = sum(
        adapter_params_per_layer(cfg, in_features=i, out_features=o, context_dim=768, out_splits=s)
        for i, o, s in shapes
    )
    rank, lora = param_matched_lora_rank(cola, shapes)

    def at(r):
        return sum(
            adapter_params_per_layer(LoRAConfig(rank=r), in_features=i, out_features=o, out_splits=s)
            for i, o, s in shapes
        )

    assert at(rank) == lora
    assert abs(lora - cola) <= abs(at(rank - 1) - cola) and abs(lora - cola) <= abs(at(rank + 1) - cola)
    assert abs(lora - cola) <= at(1)  # within one rank step of equality
    assert rank > 8


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rank=0), "rank must be a positive integer, got 0"),
        (dict(rank=2.5), "rank must be a positive integer"),
        (dict(alpha=-1), "alpha must be a positive number, got -1"),
        (dict(sharing="shared"), r"sharing must be one of \['full', 'none', 'shared_a', 'shared_b'\], got 'shared'"),
        (dict(propagation="progresive"), r"propagation must be one of \['module_wise', 'progressive', 'uniform'\]"),
        (dict(condition="random"), "condition must be one of"),
        (dict(condition_pooling="max"), "condition_pooling must be one of"),
        (dict(reduction=0), "reduction must be a positive integer"),
        (dict(dropout=1.0), r"dropout must be a float in \[0, 1\)"),
        (dict(lambda_init="a"), "lambda_init must be a float or None"),
    ],
)
def test_config_errors_name_field_value_and_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CoLAConfig(**kwargs)


def test_config_from_dict():
    assert isinstance(config_from_dict({"method": "lora", "rank": 4}), LoRAConfig)
    assert config_from_dict({"method": "cola", "sharing": "full"}).sharing == "full"
    with pytest.raises(ValueError, match="peft.method must be one of"):
        config_from_dict({"method": "dora"})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rnak'\]"):
        config_from_dict({"method": "lora", "rnak": 4})
    with pytest.raises(ValueError, match="reduction=64 leaves no hidden unit"):
        HyperNetwork(32, 4, reduction=64)


def test_peft_imports_torch_only():
    code = (
        "import sys; import cola.peft; "
        "bad = [m for m in ('timm', 'transformers', 'lightning', 'hydra', 'omegaconf', 'torchmetrics', 'safetensors', "
        "'cola.models', 'cola.tasks', 'cola.data') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_overlapping_targets_count_under_the_most_specific():
    model = nn.Module()
    model.attention = nn.Module()
    model.attention.output = nn.Module()
    model.attention.output.dense = nn.Linear(4, 4)
    model.output = nn.Module()
    model.output.dense = nn.Linear(4, 4)
    report = inject_adapters(model, LoRAConfig(rank=2), ["attention.output.dense", "output.dense"])
    assert report.per_target == {"attention.output.dense": 1, "output.dense": 1}


# --------------------------------------------------------------------------------------------- hypernet init
def test_hypernet_init_trunc_normal_statistics():
    """Official: the host models re-initialise every nn.Linear with trunc_normal(std 0.02), biases 0."""
    torch.manual_seed(0)
    net = HyperNetwork(768, 16, reduction=16)  # fc1 768 -> 48 (36,864 weights), fc2 48 -> 256 (12,288)
    for fc in (net.fc1, net.fc2):
        w = fc.weight.detach().double()
        assert torch.count_nonzero(fc.bias) == 0
        # std of n normal samples: relative standard error 1 / sqrt(2n) < 0.7 %; 5 % is > 7 standard errors
        assert abs(w.std().item() / 0.02 - 1) < 0.05
        # a normal, not a uniform of the same std: the tails reach beyond the uniform's bound sqrt(3) std
        assert w.abs().max().item() > 3 * 0.02
    assert torch.equal(net.norm1.weight, torch.ones(48)) and torch.count_nonzero(net.norm2.bias) == 0


def test_hypernet_init_torch_keeps_linear_defaults():
    torch.manual_seed(0)
    net = HyperNetwork(768, 16, reduction=16, init="torch")
    bound = 1 / math.sqrt(768)  # nn.Linear: kaiming_uniform(a=sqrt(5)) weights and uniform biases in +-1/sqrt(fan_in)
    assert net.fc1.weight.abs().max().item() <= bound and torch.count_nonzero(net.fc1.bias) > 0
    layer = CoLALinear(_base(), CoLAConfig(rank=R, reduction=4, hypernet_init="torch"), context_dim=D_C)
    assert torch.count_nonzero(layer.cola_hypernet.fc1.bias) > 0
    with pytest.raises(ValueError, match=r"hypernet_init must be one of \['torch', 'trunc_normal'\], got 'xavier'"):
        CoLAConfig(hypernet_init="xavier")


def test_per_stream_settings_validation():
    cfg = CoLAConfig(rank=R, reduction={"vision": 16, "audio": 8}, condition_pooling={"vision": "mean", "audio": "cls"})
    assert cfg.for_stream("audio").reduction == 8 and cfg.for_stream("vision").reduction == 16
    assert CoLAConfig(reduction=4).for_stream("text").reduction == 4
    with pytest.raises(ValueError, match=r"reduction.audio must be a positive integer, got 0"):
        CoLAConfig(reduction={"vision": 16, "audio": 0})
    with pytest.raises(ValueError, match=r"condition_pooling.vision must be one of .*got 'max'"):
        CoLAConfig(condition_pooling={"vision": "max"})
    with pytest.raises(ValueError, match="per stream; build the layer with config.for_stream"):
        CoLALinear(_base(), cfg, context_dim=D_C)
    with pytest.raises(ValueError, match="reduction has no entry for the text stream"):
        cfg.for_stream("text")


def test_shuffled_groups_take_the_next_sample():
    layer = CoLALinear(_base(), CoLAConfig(rank=R, reduction=4, condition="shuffled"), context_dim=D_C)
    c = torch.randn(6, D_C)
    layer.set_condition(c, group=3)  # 2 samples x 3 rows
    torch.testing.assert_close(layer._effective_condition(c), torch.cat([c[3:], c[:3]]))
    layer.set_condition(c, group=4)
    with pytest.raises(ValueError, match="6 rows in groups of 4"):
        layer(torch.randn(6, 2, D_IN))


# ----------------------------------------------------------------------------------------- the method registry
def _method_layer(name: str, seed: int = 0) -> nn.Module:
    """One layer of a row of the method table (``method`` or ``method+intra``) on a (D_IN -> 3 * D_OUT) fused base
    (``_base(D_IN, 3 * D_OUT)``: the original layer), its exchange input handed over."""
    from cola.peft import METHODS

    method, _, intra = name.partition("+")
    m = METHODS[method]
    kw = dict(intra=intra or "lora")
    config = m.config(rank=R, alpha=2.0, dropout=0.0, **kw) if m.config is not LoRAConfig else LoRAConfig(rank=R, **kw)
    if m.derive is not None:  # a factory: the config it derives for these shapes
        config = m.derive(config, [(config, D_IN, 3 * D_OUT, D_C, 3)]).config
    torch.manual_seed(seed)
    layer = m.layer.build(_base(D_IN, 3 * D_OUT), config, context_dim=D_C, out_splits=3)
    if m.exchange == "condition":
        layer.set_condition(torch.randn(2, D_C))
    elif m.exchange == "tokens":
        layer.set_context(torch.randn(2, 5, D_C))
    return layer


ADAPTING = [n for n, m in METHODS.items() if m.injects]  # every registered method with a layer (VeRA included)
VARIANTS = ["lora+dora", "lora+rslora", "lora+pissa", "cola+dora", "cola+rslora", "cola+pissa"]
VARIANTS += ["lora_param_matched+dora", "moka+rslora", "lora+adalora", "cola+adalora", "lora_param_matched+adalora"]
ROWS = ADAPTING + VARIANTS
"""The shared method table: every method, and the intra variants (``peft.intra``) of those with an intra path."""


def test_registry_lists_every_method_and_names_the_choices():
    from cola.peft import METHODS, build_peft, get_method

    assert list(METHODS)[0] == "frozen" and list(METHODS)[-2:] == ["cola", "full"]  # the report order
    assert {"cola", "lora", "lora_param_matched", "moka", "vera", "frozen", "full"} <= set(METHODS)
    assert set(ADAPTING) == {r.partition("+")[0] for r in ROWS}
    with pytest.raises(ValueError, match=r"peft.method must be one of \['frozen', 'lora'.*got 'dora'"):
        get_method("dora")
    spec = build_peft(method="lora_param_matched", rank=4, alpha=2, split_fused=False, layers=[0])
    assert spec.config.split_fused is False and spec.layers == [0]
    assert spec.to_dict() == {
        "method": "lora_param_matched",
        "rank": 4,
        "alpha": 2,
        "split_fused": False,
        "layers": [0],
    }
    assert build_peft(method="full").config is None and METHODS["full"].trains_towers


def test_a_method_answers_from_its_layer_class():
    """What a layer class declares is read from it, never repeated in the registry: config class, exchange, merging,
    B matrices; the adapter group and LoRA+ are asked of the method."""
    from cola.optim import check_loraplus_ratio

    for name, m in METHODS.items():
        if m.layer is None:
            assert m.config is None and m.exchange is None and not m.merges and m.up_projections == ()
            continue
        assert m.config is (m.parses_as or m.layer.config_class) and m.config.method == name
        assert (m.exchange, m.merges, m.up_projections) == (m.layer.exchange, m.layer.mergeable, m.layer.up_projections)
    assert METHODS["lora_param_matched"].config is not METHODS["lora_param_matched"].layer.config_class
    assert METHODS["full"].in_adapter_group("towers.vision.model.blocks.0.mlp.fc1.weight")
    assert not METHODS["cola"].in_adapter_group("towers.vision.model.blocks.0.mlp.fc1.weight")
    assert METHODS["cola"].in_adapter_group("towers.vision.model.blocks.0.mlp.fc1.cola_hypernet.fc1.weight")
    check_loraplus_ratio(16, METHODS["moka"])
    for name in ("frozen", "full", "vera"):  # no trained B matrix: refused, naming the methods that have one
        with pytest.raises(
            ValueError, match=rf"peft.method='{name}' has none.*peft=lora, lora_param_matched, moka, cola"
        ):
            check_loraplus_ratio(16, METHODS[name])


def test_the_registry_answers_frozen_gated_and_the_papers_comparison():
    """What reports, the benchmark and the card ask of a method comes from its entry, never its name: whether it is
    the frozen baseline, whether its layers learn a gate λ (the λ profile, read under the layer's own name) and
    which methods the paper compares."""
    from cola.analysis import lambda_values
    from cola.peft import GATED_METHODS, PAPER_COMPARISON, PAPER_METHOD, REFERENCE_METHOD

    assert [n for n, m in METHODS.items() if m.frozen] == ["frozen"]
    assert not METHODS["full"].frozen  # nothing injected, but every tower weight trains
    assert GATED_METHODS == tuple(n for n, m in METHODS.items() if m.layer is not None and m.layer.gate) == ("cola",)
    for name in GATED_METHODS:
        assert METHODS[name].exchange == "condition"  # λ gates the path the other stream's condition feeds
        layer = _method_layer(name)
        gate = getattr(layer, METHODS[name].gate)
        assert isinstance(gate, nn.Parameter) and gate.shape == (layer.out_splits,)
        assert lambda_values(nn.Sequential(layer)) == {"0": gate.tolist()}
    assert all(m.gate is None for n, m in METHODS.items() if n not in GATED_METHODS)
    assert (PAPER_METHOD, REFERENCE_METHOD) == PAPER_COMPARISON == ("cola", "lora")


@pytest.mark.parametrize("name", ROWS)
def test_every_method_is_the_base_layer_at_init_and_merges_exactly(name):
    from cola.peft import METHODS

    layer = _method_layer(name)
    original = _base(D_IN, 3 * D_OUT)  # the layer before injection (PiSSA replaces the base by a residual)
    x = torch.randn(2, 5, D_IN)
    # zero-init = the frozen (original) model; PiSSA's W_res x + s B0 A0 x re-associates fp32 sums of ~D_IN terms
    # of size ~1 (a few ulps), where every other row adds exact zeros
    tol = 1e-5 if name.endswith("pissa") else 1e-6
    torch.testing.assert_close(layer(x), original(x), rtol=0, atol=tol)
    perturb(layer)
    before = layer(x)
    assert layer.mergeable == METHODS[name.partition("+")[0]].merges
    if layer.mergeable:
        layer.merge()
        torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.original_weight(), original.weight, rtol=0, atol=1e-5)
        layer.unmerge()
        torch.testing.assert_close(layer.original_weight(), original.weight, rtol=0, atol=1e-5)
    torch.testing.assert_close(layer(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ROWS)
def test_every_method_trains_exactly_its_adapter_parameters(name):
    model = nn.Sequential(_method_layer(name))
    n_trainable = mark_only_adapters_trainable(model)
    perturb(model[0])
    model(torch.randn(2, 5, D_IN)).square().sum().backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == p.requires_grad == (not n.startswith("0.base_layer.")), n
    # the count from shapes alone (what param matching and the injection report use) is the built layer's
    cfg = model[0].config
    assert n_trainable == cfg.params_per_layer(in_features=D_IN, out_features=3 * D_OUT, context_dim=D_C, out_splits=3)
    assert n_trainable == count_parameters(model)["adapter"]
