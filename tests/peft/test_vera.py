"""VeRA (cola.peft.vera): equal to HF peft's VeRA on the same frozen matrices, its frozen matrices seeded per shape and
kept in adapter files and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cola.peft import METHODS, build_peft, inject_adapters, load_adapters, mark_only_adapters_trainable, save_adapters
from cola.peft.vera import VeRAConfig, VeRALinear, frozen_random
from tests.conftest import hand_batch, make_task

D_IN, D_HID, D_OUT, R = 24, 40, 18, 8


class Net(nn.Module):
    """Two linears of different shapes (HF slices one shared A and B per model; here each shape has its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(D_IN, D_HID)
        self.down = nn.Linear(D_HID, D_OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.up(x)))


def _perturb_vectors(model: nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "vera_lambda" in n:
                p.copy_(torch.randn(p.shape, generator=g))


def test_vera_equals_hf_peft():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    ref, ours = Net(), Net()
    ours.load_state_dict(ref.state_dict())
    hf = peft.get_peft_model(
        ref, peft.VeraConfig(r=R, target_modules=["up", "down"], vera_dropout=0.0, projection_prng_key=7)
    )
    report = inject_adapters(ours, VeRAConfig(rank=R, projection_seed=7), ["up", "down"])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name in ("up", "down"):
            theirs, mine = getattr(hf.base_model.model, name), report.modules[name]
            mine.vera_A.copy_(theirs.vera_A["default"][:, : mine.in_features])  # HF's shared draw, sliced as HF does
            mine.vera_B.copy_(theirs.vera_B["default"][: mine.out_features, :])
            for v in ("vera_lambda_d", "vera_lambda_b"):
                value = torch.randn(getattr(mine, v).shape, generator=g)
                getattr(theirs, v)["default"].copy_(value)
                getattr(mine, v).copy_(value)
    x = torch.randn(3, 5, D_IN)
    with torch.no_grad():
        out, expected = ours(x), hf(x)
        # Rounding bound (float32, u = 2**-24). Each linear computes W x + b + diag(b) B diag(d) A x, by either side
        # in its own order (HF scales B's output by b, here b scales B's rows before the product): a sum of products
        # of length n carries at most ~n u sum|terms| (dot-product bound), n <= d_in + r + 3 for these chains. The
        # first layer's error reaches the second through tanh (1-Lipschitz) and the second layer's |W| and |adapter|
        # rows, so the bound is carried through with the absolute matrices; a wrong slice, scale or transpose is O(1).
        u = 2.0**-24

        def terms(layer: VeRALinear, a: torch.Tensor) -> torch.Tensor:  # sum|terms| of one adapted linear
            w, bias = layer.base_layer.weight.abs(), layer.base_layer.bias.abs()
            adapter = layer.vera_lambda_b.abs()[:, None] * layer.vera_B.abs()
            adapter = adapter @ (layer.vera_lambda_d.abs()[:, None] * layer.vera_A.abs())
            return a @ (w + adapter).T + bias, w + adapter

        up, down = report.modules["up"], report.modules["down"]
        t_up, _ = terms(up, x.abs())
        err_up = 2 * (D_IN + R + 3) * u * t_up  # both sides within it of the exact first layer
        t_down, m_down = terms(down, torch.tanh(up(x)).abs() + err_up)
        bound = 2 * (D_HID + R + 3) * u * t_down + err_up @ m_down.T
        diff = (out - expected).abs()
    assert (diff <= bound).all(), (diff.max(), bound.min())
    base = Net()
    base.load_state_dict({k.replace("base_layer.", ""): v for k, v in ours.state_dict().items() if "vera_" not in k})
    assert ((out - base(x)).abs() > 100 * bound).any()  # the adapters are live: the bound does not hide them


def test_frozen_matrices_are_shared_per_shape_seeded_and_not_trained():
    a1, a2 = (
        VeRALinear(nn.Linear(D_IN, D_OUT), VeRAConfig(rank=R)),
        VeRALinear(nn.Linear(D_IN, D_OUT), VeRAConfig(rank=R)),
    )
    other = VeRALinear(nn.Linear(D_IN, D_OUT), VeRAConfig(rank=R, projection_seed=1))
    wide = VeRALinear(nn.Linear(D_HID, D_OUT), VeRAConfig(rank=R))
    assert torch.equal(a1.vera_A, a2.vera_A) and torch.equal(a1.vera_B, a2.vera_B)  # one draw per shape
    assert not torch.equal(a1.vera_A, other.vera_A) and not torch.equal(a1.vera_B, other.vera_B)
    assert torch.equal(wide.vera_B, a1.vera_B) and wide.vera_A.shape == (R, D_HID)  # B's shape is the same
    assert torch.equal(a1.vera_A, frozen_random(R, D_IN, seed=0))
    bound = (6.0 / D_IN) ** 0.5  # kaiming-uniform for fan-in d_in
    assert a1.vera_A.abs().max() <= bound and a1.vera_A.abs().max() > 0.9 * bound
    assert {n for n, _ in a1.named_buffers()} == {"vera_A", "vera_B"}
    model = nn.Sequential(a1)
    assert (
        mark_only_adapters_trainable(model)
        == R + D_OUT
        == a1.config.params_per_layer(in_features=D_IN, out_features=D_OUT)
    )
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"0.vera_lambda_d", "0.vera_lambda_b"}
    x = torch.randn(2, 5, D_IN)
    torch.testing.assert_close(a1(x), a1.base_layer(x), rtol=0, atol=0)  # b = 0 at init
    assert torch.equal(a1.vera_lambda_d, torch.full((R,), 0.1))


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="peft.intra='dora' does not apply to VeRA"):
        VeRAConfig(intra="dora")
    with pytest.raises(ValueError, match="projection_seed must be a non-negative integer, got -1"):
        VeRAConfig(projection_seed=-1)
    spec = build_peft(method="vera", rank=4, alpha=2, d_initial=0.5, propagation="progressive", layers=None)
    assert spec.method is METHODS["vera"] and spec.config == VeRAConfig(rank=4, alpha=2, d_initial=0.5)


def test_vera_runs_the_plain_intra_variant_only_as_the_variant_says(monkeypatch):
    """VeRA asks the variant object whether it is the plain one (:attr:`cola.peft.IntraVariant.plain`), never its
    name: every other variant is refused, naming the plain one; a variant that says it is plain is accepted."""
    from cola.peft import INTRA_VARIANTS

    assert [name for name, v in INTRA_VARIANTS.items() if v.plain] == ["lora"]
    for name, variant in INTRA_VARIANTS.items():
        if variant.plain:
            assert VeRAConfig(intra=name).variant is variant
        else:
            with pytest.raises(ValueError, match=rf"peft.intra='{name}' does not apply to VeRA \(use lora\)"):
                VeRAConfig(intra=name)
    monkeypatch.setattr(type(INTRA_VARIANTS["rslora"]), "plain", True)
    assert VeRAConfig(intra="rslora").intra == "rslora"
    with pytest.raises(ValueError, match=r"does not apply to VeRA \(use lora or rslora\)"):
        VeRAConfig(intra="dora")


def test_adapter_file_round_trip_keeps_the_frozen_matrices(tmp_path):
    torch.manual_seed(0)
    src, dst = Net(), Net()
    dst.load_state_dict(src.state_dict())
    inject_adapters(src, VeRAConfig(rank=R), ["up", "down"])
    inject_adapters(dst, VeRAConfig(rank=R), ["up", "down"])
    _perturb_vectors(src)
    with torch.no_grad():  # frozen matrices of another draw (another seed or torch version): the file must win
        for m in dst.modules():
            if isinstance(m, VeRALinear):
                m.vera_A.normal_()
                m.vera_B.normal_()
    path = save_adapters(tmp_path / "adapter.safetensors", src, config={"method": "vera", "rank": R})
    load_adapters(path, dst, config={"method": "vera", "rank": R})
    x = torch.randn(2, 3, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_checkpoint_keeps_the_frozen_matrices_and_reloads_exactly():
    task = make_task("vera")
    _perturb_vectors(task)
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    frozen = [k for k in ckpt["state_dict"] if k.endswith(("vera_A", "vera_B"))]
    layers = [n for n, m in task.named_modules() if isinstance(m, VeRALinear)]
    assert layers and len(frozen) == 2 * len(layers)
    assert not any(k.startswith("encoder.") and "vera_" not in k for k in ckpt["state_dict"])  # no tower weights
    assert ckpt["cola_peft_config"] == {"method": "vera", "rank": 8, "alpha": 4}
    other = make_task("vera")  # the same towers (rebuilt from the seed), its vectors at init, its frozen draw scrambled
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, VeRALinear):
                m.vera_A.normal_()
    other.on_load_checkpoint(ckpt)
    other.load_state_dict(ckpt["state_dict"], strict=False)
    task.eval(), other.eval()
    batch = hand_batch()
    with torch.no_grad():
        a, b = task(batch), other(batch)
    torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_checkpoints_keep_every_frozen_adapter_tensor_of_any_method():
    """The rule is the adapter prefix, not a method's name: CoLA's random_frozen hypernetworks (frozen parameters)
    are kept as VeRA's frozen buffers are, and nothing of the frozen towers is."""
    task = make_task("cola")
    for m in task.encoder.modules():
        if hasattr(m, "cola_hypernet"):
            m.cola_hypernet.requires_grad_(False)  # what condition=random_frozen does
    keys = task.trainable_state_keys()
    hyper = [n for n, p in task.named_parameters() if "cola_hypernet" in n]
    assert hyper and not any(p.requires_grad for n, p in task.named_parameters() if "cola_hypernet" in n)
    assert set(hyper) <= keys
    assert not any(k.startswith("encoder.") and "base_layer" in k for k in keys)
