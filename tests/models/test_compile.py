"""torch.compile of the CoLA dual encoder: one graph, no break, in training (forward and backward) and in evaluation
with the intra path merged (README.md#compile). Tiny random towers on CPU; ``aot_eager`` traces forward and backward
as inductor would (the same dynamo graph and AOT autograd split) without generating code (tens of seconds for the file).

Tolerance: the compiled graph runs the same aten kernels as eager, only fused views and reassociated reductions can
differ, so outputs agree to a few fp32 roundings. For a GEMM of depth n the classic bound is ``n u |x| |w|``
(u = 2^-24); with n <= 128 and tokens of order 1 through two one-block towers, ``rtol = atol = 1e-5`` is
about 30 ulp of headroom per value and still three orders of magnitude below the adapter paths' own contribution
(the perturbed adapters move the output by > 1e-2: checked in the training test).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo
from torch import nn

from cola.peft import CoLALinear, merge_adapters
from tests.conftest import perturb
from tests.models.test_dual_encoder import _cola, _encoder, _inputs, _streams

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(**peft):
    # one block pair: fused qkv (3 slices) on vision, separate q/k/v on text; dynamo traces every layer, so depth only
    # adds tracing time
    enc = _encoder(_cola(**peft), a="vit", b="bert", depth_a=1, depth_b=1)
    perturb(enc, seed=3)
    for m in enc.modules():  # BERT's dropout draws differ between eager and compiled RNG streams
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    inputs = _streams(enc, _inputs("vit", batch=2), _inputs("bert", batch=2))
    return enc, inputs


def _tokens(enc, inputs) -> torch.Tensor:
    out = enc(inputs)
    return torch.cat([t.flatten() for t in out.tokens.values()])


def _explain(enc, inputs):
    return torch._dynamo.explain(lambda i: enc(i).tokens)(inputs)


@pytest.mark.parametrize(
    "peft",
    [{}, {"propagation": "uniform", "sharing": "full", "condition": "shuffled"}],
    ids=["progressive", "uniform-full-shuffled"],
)
def test_training_forward_has_no_graph_break(peft):
    enc, inputs = _model(**peft)
    enc.train()
    ex = _explain(enc, inputs)
    assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
    assert ex.graph_count == 1


def test_merged_eval_forward_has_no_graph_break():
    enc, inputs = _model()
    merge_adapters(enc)
    with torch.no_grad():
        ex = _explain(enc.eval(), inputs)
    assert ex.graph_break_count == 0, [b.reason for b in ex.break_reasons]
    assert ex.graph_count == 1


def test_compiled_training_step_equals_eager():
    """fullgraph=True raises on any break; forward outputs and every adapter gradient match eager."""
    enc, inputs = _model()
    enc.train()
    eager = _tokens(enc, inputs)
    frozen = copy.deepcopy(enc)
    with torch.no_grad():
        for n, p in frozen.named_parameters():
            if n.endswith(("lora_B", "cola_B")):
                p.zero_()  # B = 0: the frozen towers
        assert (eager - _tokens(frozen, inputs)).abs().max() > 1e-2  # the adapters are live, far above TOL
    eager.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad}
    enc.zero_grad(set_to_none=True)
    compiled = torch.compile(lambda i: _tokens(enc, i), backend="aot_eager", fullgraph=True)
    out = compiled(inputs)
    torch.testing.assert_close(out, eager.detach(), **TOL)
    out.square().sum().backward()
    assert grads and all(n.startswith("towers.") for n in grads)
    for n, p in enc.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-4, msg=n)  # sums of 2x4 token terms


def test_compiled_merged_eval_uses_the_merged_weight():
    """With the intra path merged the compiled graph never reads A_L / B_L: NaN planted in them after the merge
    leaves the compiled output finite and equal to merged eager, and the graph takes no ``lora_`` tensor."""
    enc, inputs = _model()
    enc.eval()
    with torch.no_grad():
        unmerged = _tokens(enc, inputs)
        merge_adapters(enc)
        merged = _tokens(enc, inputs)
        torch.testing.assert_close(merged, unmerged, **TOL)
        layers = [m for m in enc.modules() if isinstance(m, CoLALinear)]
        assert layers and all(m.merged for m in layers)
        for m in layers:
            m.lora_A.fill_(float("nan"))
            m.lora_B.fill_(float("nan"))
        inputs_seen: list[str] = []

        def backend(gm, example_inputs):
            inputs_seen.extend(n.name.lower() for n in gm.graph.nodes if n.op == "placeholder" and n.users)
            return gm.forward

        out = torch.compile(lambda i: _tokens(enc, i), backend=backend, fullgraph=True)(inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, merged, **TOL)
    assert any("cola_a" in n for n in inputs_seen)  # the inter path runs (dynamo lower-cases the names)
    assert not [n for n in inputs_seen if "lora_a" in n or "lora_b" in n]


@pytest.mark.slow  # a dynamic-shape recompile: ~40 s on a busy 2-core machine
def test_new_batch_size_compiles_once_more_then_shapes_are_dynamic():
    """What README.md#compile says: a second batch size recompiles once, with the batch dimension dynamic; a third
    size reuses that graph."""
    enc, _ = _model()
    enc.eval()
    frames = []

    def backend(gm, example_inputs):
        frames.append(gm)
        return gm.forward

    compiled = torch.compile(lambda i: enc(i).tokens, backend=backend, fullgraph=True)
    with torch.no_grad():
        for b in (2, 3, 4):
            compiled(_streams(enc, _inputs("vit", batch=b), _inputs("bert", batch=b)))
    assert len(frames) == 2
