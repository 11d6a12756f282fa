"""The adapters' up-projection autograd function (cola/peft/upproject.py): same values and gradients as autograd's
``out + z B^T`` per slice, in place into the base output, and B's gradient computed as ``z^T g``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from cola.peft import CoLAConfig, CoLALinear, LoRAConfig, LoRALinear
from cola.peft.upproject import up_project


def _reference(out: torch.Tensor, z: torch.Tensor, b: torch.Tensor, s: int) -> torch.Tensor:
    """Slice s of the output gets z_s B_s^T (plain autograd ops)."""
    d, k = b.shape
    zs = z.reshape(*z.shape[:-1], s, k)
    bs = b.reshape(s, d // s, k)
    return out + torch.einsum("...sk,sdk->...sd", zs, bs).reshape(out.shape)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("shape", [(7,), (2, 5), (2, 3, 4)])
def test_values_and_gradients_equal_autograd(splits, shape):
    torch.manual_seed(0)
    d_in, d, k = 6, 12, 4
    w = torch.randn(d, d_in, dtype=torch.float64)
    x = torch.randn(*shape, d_in, dtype=torch.float64, requires_grad=True)
    z = torch.randn(*shape, splits * k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(d, k, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, d, dtype=torch.float64)
    ours = up_project(F.linear(x, w), z, b, splits)
    ref = _reference(F.linear(x, w), z, b, splits)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(ours, (x, z, b), g)
    want = torch.autograd.grad(ref, (x, z, b), g)
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [False, True])
def test_adds_in_place_into_the_fresh_base_output(bias):
    """F.linear on (B, N, d) returns a fresh tensor (no bias) or a view of a fresh (B N, d) product (bias): the
    function writes into that storage instead of copying it."""
    x = torch.randn(2, 3, 4, requires_grad=True)
    w = torch.randn(6, 4)
    out = F.linear(x, w, torch.randn(6) if bias else None)
    z, b = torch.randn(2, 3, 2, requires_grad=True), torch.randn(6, 2, requires_grad=True)
    y = up_project(out, z, b, 1)
    assert y.data_ptr() == out.data_ptr() and y.shape == out.shape


def test_copies_when_the_output_cannot_be_written():
    """A leaf that requires grad, or a non-contiguous tensor, is never modified."""
    z, b = torch.randn(5, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    leaf = torch.randn(5, 4, requires_grad=True)
    before = leaf.detach().clone()
    y = up_project(leaf, z, b, 1)
    assert torch.equal(leaf.detach(), before) and y.data_ptr() != leaf.data_ptr()
    strided = torch.randn(4, 5).t()
    torch.testing.assert_close(up_project(strided, z, b, 1), _reference(strided, z, b, 1))


def test_weight_gradient_is_never_the_slow_layout():
    """B's gradient is z^T g ((k, N) @ (N, d)), not autograd's g^T z ((d, N) @ (N, k), 6-10x slower for k <= 8)."""
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(32, 48), LoRAConfig(rank=4, alpha=4, split_fused=False))
    x = torch.randn(2, 10, 32)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        layer(x).sum().backward()
    shapes = [e.input_shapes for e in prof.events() if e.name == "aten::mm"]
    assert [[4, 20], [20, 48]] in shapes  # z^T g
    assert [[48, 20], [20, 4]] not in shapes  # g^T z


@pytest.mark.parametrize("splits", [1, 3])
def test_layers_train_as_the_plain_autograd_formula(splits, monkeypatch):
    """LoRA and CoLA layers: every gradient equals the one of the plain out-of-place formula (float64)."""
    from cola.peft.layers import AdapterLinear

    def reference_add_up(self, out, z, b):
        return _reference(out, z.to(out.dtype), b.to(out.dtype), self.out_splits)

    torch.manual_seed(0)
    base = torch.nn.Linear(24, 36).double()
    layers = [
        LoRALinear(base, LoRAConfig(rank=4, alpha=8), out_splits=splits),
        CoLALinear(torch.nn.Linear(24, 36).double(), CoLAConfig(rank=4, alpha=8), context_dim=16, out_splits=splits),
    ]
    for layer in layers:
        layer.double()
        with torch.no_grad():
            for name, p in layer.named_parameters():
                if name.endswith(("lora_B", "cola_B")):
                    p.normal_()
        if isinstance(layer, CoLALinear):
            layer.set_condition(torch.randn(2, 16, dtype=torch.float64))
        x = torch.randn(2, 5, 24, dtype=torch.float64, requires_grad=True)
        params = [x, *(p for p in layer.parameters() if p.requires_grad)]
        got = torch.autograd.grad(layer(x).pow(2).sum(), params)
        with monkeypatch.context() as m:
            m.setattr(AdapterLinear, "_add_up", reference_add_up)
            want = torch.autograd.grad(layer(x).pow(2).sum(), params)
        for a, e in zip(got, want, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
