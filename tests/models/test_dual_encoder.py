"""cola.models.DualEncoder: identity at init for every method, the propagation table (docs/method.md#propagation),
masked pooling, gradients across streams, layer maps for towers of unequal depth. Tiny random towers, no network."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from cola.models import (
    DualEncoder,
    Tower,
    build_tower,
    family_out_splits,
    family_targets,
    pool_tokens,
    pooling_weights,
    resolve_layer_pairs,
)
from cola.peft import CoLALinear, LoRALinear, MoKALinear, is_adapter_param
from tests.conftest import perturb
from tests.models.conftest import reference_forward as _reference
from tests.models.conftest import tower_inputs

TARGETS = {f: family_targets(f) for f in ("vit", "bert", "ast")}  # every linear layer of a block
SPLITS = {f: family_out_splits(f) for f in ("vit", "bert", "ast")}
SHARINGS = ["none", "shared_a", "shared_b", "full"]
PROPAGATIONS = ["uniform", "module_wise", "progressive"]
# docs/method.md#propagation: which state of the other stream each stage receives.
TABLE = {
    "uniform": {"qkv": "x", "proj": "x", "mlp": "x"},
    "module_wise": {"qkv": "x", "proj": "x", "mlp": "x_attn"},
    "progressive": {"qkv": "x", "proj": "ctx", "mlp": "x_attn"},
}
TOL = 1e-6


def _tower(family: str, depth: int = 2, seed: int = 0) -> Tower:
    torch.manual_seed(seed)
    if family == "vit":
        kw = dict(name="vit_small_patch14_dinov2", img_size=28, embed_dim=64, depth=depth, num_heads=2)
        tower = build_tower(family="vit", **kw)
    elif family == "bert":
        tiny = dict(
            hidden_size=32, num_hidden_layers=depth, num_attention_heads=2, intermediate_size=64, vocab_size=100
        )
        tower = build_tower(family="bert", tiny=tiny)
    else:
        tiny = dict(hidden_size=32, num_hidden_layers=depth, num_attention_heads=2, intermediate_size=64)
        tower = build_tower(family="ast", tiny=tiny)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial weights (layer scale 1e-5 and zero AST positions would hide bugs)
        for p in tower.model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return tower.eval()


_inputs = partial(tower_inputs, lengths=(3, 5))  # more padding than the tower tests: 3 and 5 of 7 tokens real


def _cola(**kw) -> dict:
    return {"method": "cola", "rank": 4, "alpha": 2, "reduction": 4, "condition_pooling": "mean", **kw}


def _dual(tower_a: Tower, tower_b: Tower, *, targets_a=(), targets_b=(), out_splits_a=None, out_splits_b=None, **kw):
    """A vision tower and a second tower (text or audio), keyed by their streams."""
    a, b = tower_a.modality, tower_b.modality
    return DualEncoder(
        {a: tower_a, b: tower_b},
        targets={a: targets_a, b: targets_b},
        out_splits={a: out_splits_a or {}, b: out_splits_b or {}},
        **kw,
    )


def _streams(enc: DualEncoder, inputs_a: dict, inputs_b: dict) -> dict[str, dict]:
    """Inputs of the first and second stream, keyed by stream name."""
    return dict(zip(enc.streams, (inputs_a, inputs_b), strict=True))


def _second(x) -> str:
    """The second stream of an encoder or of its output."""
    return x.streams[1] if isinstance(x, DualEncoder) else list(x.tokens)[1]


def _encoder(peft, a="vit", b="bert", depth_a=2, depth_b=2, **kw) -> DualEncoder:
    return _dual(
        _tower(a, depth_a, seed=0),
        _tower(b, depth_b, seed=1),
        peft=peft,
        targets_a=TARGETS[a],
        targets_b=TARGETS[b],
        out_splits_a=SPLITS[a],
        out_splits_b=SPLITS[b],
        **kw,
    ).eval()


def _record_conditions(tower: Tower) -> tuple[dict, list]:
    """(block, module name) -> (stage, condition the layer ran with)."""
    seen: dict[tuple[int, str], tuple[str, torch.Tensor]] = {}
    handles = []
    for i, block in enumerate(tower.blocks):
        for rel, m in block.named_modules():
            if isinstance(m, CoLALinear):
                stage = tower.stage_of(rel)

                def hook(mod, args, i=i, rel=rel, stage=stage):
                    seen[(i, rel)] = (stage, mod._condition.detach().clone())

                handles.append(m.register_forward_pre_hook(hook))
    return seen, handles


# Modules whose input is the block input x, the attention context ctx and the post-attention state x_attn.
STATE_MODULES = {
    "vit": {"x": "norm1", "ctx": "attn.proj", "x_attn": "norm2"},
    "bert": {"x": "attention.self.query", "ctx": "attention.output.dense", "x_attn": "intermediate.dense"},
    "ast": {"x": "layernorm_before", "ctx": "attention.o_proj", "x_attn": "layernorm_after"},
}


def _record_states(tower: Tower) -> tuple[dict, list]:
    """(block, "x" | "ctx" | "x_attn") -> tensor."""
    seen: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for i, block in enumerate(tower.blocks):
        for kind, name in STATE_MODULES[tower.family].items():

            def hook(mod, args, i=i, kind=kind):
                seen[(i, kind)] = args[0].detach().clone()

            handles.append(block.get_submodule(name).register_forward_pre_hook(hook))
    return seen, handles


def _masked_mean(h: torch.Tensor, mask: torch.Tensor, prefix: int) -> torch.Tensor:
    """Independent reference of ``mean`` pooling: real tokens only, prefix tokens excluded."""
    m = mask.clone().float()
    m[:, :prefix] = 0
    return (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)


# --------------------------------------------------------------------------------------------- identity at init
CASES = (
    [("cola", s, p) for s in SHARINGS for p in PROPAGATIONS]
    + [(m, "none", p) for m in ("lora", "moka") for p in PROPAGATIONS]
    + [("lora_param_matched", "none", "progressive"), ("frozen", "none", "progressive"), ("full", "none", "uniform")]
)


def _peft(method: str, sharing: str, propagation: str) -> dict:
    if method in ("cola", "lora_param_matched"):
        return _cola(method=method, sharing=sharing, propagation=propagation)
    if method == "lora":
        return {"method": "lora", "rank": 4, "alpha": 2, "propagation": propagation, "condition_pooling": "mean"}
    if method == "moka":
        return {"method": "moka", "rank": 4, "alpha": 2, "propagation": propagation}
    return {"method": method, "rank": 4, "alpha": 2, "propagation": propagation}


@pytest.mark.parametrize(("method", "sharing", "propagation"), CASES)
def test_output_equals_frozen_towers_at_init(method, sharing, propagation):
    a, b = _tower("vit", seed=0), _tower("bert", seed=1)
    ia, ib = _inputs("vit"), _inputs("bert")
    ref_a, ref_b = _reference(a, ia), _reference(b, ib)
    enc = _dual(
        a,
        b,
        peft=_peft(method, sharing, propagation),
        targets_a=TARGETS["vit"],
        targets_b=TARGETS["bert"],
        out_splits_a=SPLITS["vit"],
    ).eval()
    out = enc(_streams(enc, ia, ib))
    torch.testing.assert_close(out.tokens["vision"], ref_a, rtol=0, atol=TOL)
    torch.testing.assert_close(out.tokens[_second(out)], ref_b, rtol=0, atol=TOL)
    assert out.masks[_second(out)].tolist()[0] == [True] * 3 + [False] * 4 and bool(out.masks["vision"].all())
    assert (out.num_prefix["vision"], out.num_prefix[_second(out)]) == (1, 1)
    n_adapted = sum(isinstance(m, (CoLALinear, LoRALinear, MoKALinear)) for m in enc.modules())
    assert n_adapted == (0 if method in ("frozen", "full") else 2 * (4 + 6))
    if method not in ("frozen", "full"):  # and the adapters matter once B is non-zero
        perturb(enc, seed=3)
        assert not torch.allclose(enc(_streams(enc, ia, ib)).tokens["vision"], ref_a, atol=1e-4)


@pytest.mark.parametrize("method", ["cola", "moka", "lora"])
def test_audio_visual_identity_at_init(method):
    a, b = _tower("vit", seed=0), _tower("ast", seed=1)
    ia, ib = _inputs("vit"), _inputs("ast")
    ref_a, ref_b = _reference(a, ia), _reference(b, ib)
    peft = _peft(method, "none", "progressive") | ({"condition_pooling": "cls"} if method == "cola" else {})
    enc = _dual(a, b, peft=peft, targets_a=TARGETS["vit"], targets_b=TARGETS["ast"], out_splits_a=SPLITS["vit"])
    out = enc.eval()(_streams(enc, ia, ib))
    torch.testing.assert_close(out.tokens["vision"], ref_a, rtol=0, atol=TOL)
    torch.testing.assert_close(out.tokens[_second(out)], ref_b, rtol=0, atol=TOL)
    assert out.num_prefix[_second(out)] == 2


# --------------------------------------------------------------------------------------------- propagation
@pytest.mark.parametrize("propagation", PROPAGATIONS)
def test_conditions_follow_the_propagation_table(propagation):
    """Each adapted layer of stream m gets exactly pool(state of m′) named by the table of
    docs/method.md#propagation, both ways."""
    enc = _encoder(_cola(propagation=propagation))
    perturb(enc, seed=3)
    ia, ib = _inputs("vit"), _inputs("bert")
    cond_a, h1 = _record_conditions(enc.towers["vision"])
    cond_b, h2 = _record_conditions(enc.towers[enc.streams[1]])
    states_a, h3 = _record_states(enc.towers["vision"])
    states_b, h4 = _record_states(enc.towers[enc.streams[1]])
    out = enc(_streams(enc, ia, ib))
    for h in h1 + h2 + h3 + h4:
        h.remove()
    assert len(cond_a) == 2 * 4 and len(cond_b) == 2 * 6
    for conds, states, other_mask, prefix in (
        (cond_a, states_b, out.masks[_second(out)], 1),
        (cond_b, states_a, out.masks["vision"], 1),
    ):
        for (i, name), (stage, c) in conds.items():
            kind = TABLE[propagation][stage]
            expected = _masked_mean(states[(i, kind)], other_mask, prefix)
            torch.testing.assert_close(c, expected, rtol=0, atol=1e-5, msg=f"block {i} {name} ({stage})")
            for other_kind in {"x", "ctx", "x_attn"} - {kind}:  # the states differ, so the check is sharp
                assert not torch.allclose(c, _masked_mean(states[(i, other_kind)], other_mask, prefix), atol=1e-4)


# Stages of stream a's block 0 whose condition changes when stream b's attention context is perturbed.
CHANGED_BY_CTX = {"uniform": set(), "module_wise": {"mlp"}, "progressive": {"proj", "mlp"}}


@pytest.mark.parametrize("propagation", PROPAGATIONS)
@pytest.mark.parametrize("where", ["ctx", "mlp"])
def test_perturbing_the_other_stream_changes_exactly_the_table_conditions(propagation, where):
    enc = _encoder(_cola(propagation=propagation))
    perturb(enc, seed=3)
    ia, ib = _inputs("vit"), _inputs("bert")
    cond, handles = _record_conditions(enc.towers["vision"])
    enc(_streams(enc, ia, ib))
    base = dict(cond)
    # ctx: add a delta to b's value projection in block 0 (changes ctx′ and x′_attn, not x′);
    # mlp: add a delta inside b's feed-forward of block 0 (changes only its output x′_out).
    block_b = enc.towers[enc.streams[1]].blocks[0]
    module = block_b.attention.self.value if where == "ctx" else block_b.intermediate.dense
    handles.append(module.register_forward_hook(lambda mod, args, out: out + 0.5))
    enc(_streams(enc, ia, ib))
    for h in handles:
        h.remove()
    changed = {(i, stage) for (i, name), (stage, c) in cond.items() if not torch.allclose(c, base[(i, name)][1])}
    expected_block0 = CHANGED_BY_CTX[propagation] if where == "ctx" else set()
    assert {s for i, s in changed if i == 0} == expected_block0
    assert {s for i, s in changed if i == 1} == {"qkv", "proj", "mlp"}  # the next block sees a changed x′


def test_masked_pooling_ignores_padding_tokens():
    ia, ib = _inputs("vit"), _inputs("bert")
    ib2 = dict(ib, input_ids=ib["input_ids"].clone())
    pad = ib["attention_mask"] == 0
    ib2["input_ids"][pad] = (ib["input_ids"][pad] % 97) + 2  # different tokens at padded positions only
    for pooling, should_change in (("mean", False), ("mean_with_padding", True)):
        enc = _encoder(_cola(condition_pooling=pooling))
        perturb(enc, seed=3)
        cond, handles = _record_conditions(enc.towers["vision"])
        out1 = enc(_streams(enc, ia, ib))
        first = dict(cond)
        out2 = enc(_streams(enc, ia, ib2))
        for h in handles:
            h.remove()
        same = all(torch.allclose(c, first[k][1], atol=1e-6) for k, (_, c) in cond.items())
        assert same != should_change, pooling
        assert torch.allclose(out1.tokens["vision"], out2.tokens["vision"], atol=1e-6) != should_change


def test_pooling_functions():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    w = pooling_weights(mask, 1, "mean")
    torch.testing.assert_close(w, torch.tensor([[0, 0.5, 0.5, 0], [0, 1 / 3, 1 / 3, 1 / 3]]))
    torch.testing.assert_close(pool_tokens(h, w), torch.stack([h[0, 1:3].mean(0), h[1, 1:].mean(0)]))
    torch.testing.assert_close(pool_tokens(h, pooling_weights(mask, 1, "mean_with_padding")), h.mean(1))
    assert pooling_weights(mask, 1, "cls") is None and torch.equal(pool_tokens(h, None), h[:, 0])
    with pytest.raises(ValueError, match="condition_pooling must be one of"):
        pooling_weights(mask, 1, "max")


def test_conditions_are_cleared_after_forward_and_on_error():
    enc = _encoder(_cola())
    enc(_streams(enc, _inputs("vit"), _inputs("bert")))
    layers = [m for m in enc.modules() if isinstance(m, CoLALinear)]
    assert layers and all(m._condition is None for m in layers)

    set_mid_forward = []

    def boom(mod, args):
        set_mid_forward.append(sum(m._condition is not None for m in layers))
        raise RuntimeError("boom")

    handle = enc.towers[enc.streams[1]].blocks[1].intermediate.dense.register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        enc(_streams(enc, _inputs("vit"), _inputs("bert")))
    handle.remove()
    assert set_mid_forward[0] > 0
    assert all(m._condition is None for m in layers)


# --------------------------------------------------------------------------------------------- MokA
def _record_contexts(tower: Tower) -> tuple[dict, list]:
    seen, handles = {}, []
    for i, block in enumerate(tower.blocks):
        for rel, m in block.named_modules():
            if isinstance(m, MoKALinear) and m.context_dim is not None:
                stage = tower.stage_of(rel)

                def hook(mod, args, i=i, rel=rel, stage=stage):
                    seen[(i, rel)] = (stage, *mod._context)

                handles.append(m.register_forward_pre_hook(hook))
    return seen, handles


@pytest.mark.parametrize("propagation", PROPAGATIONS)
def test_moka_vision_queries_text_tokens(propagation):
    enc = _encoder({"method": "moka", "rank": 4, "alpha": 2, "propagation": propagation})
    assert enc.anchor == "text"
    a_layers = [m for m in enc.towers["vision"].modules() if isinstance(m, MoKALinear)]
    b_layers = [m for m in enc.towers[enc.streams[1]].modules() if isinstance(m, MoKALinear)]
    assert all(m.context_dim == 32 for m in a_layers) and all(m.context_dim is None for m in b_layers)
    perturb(enc, seed=3)
    ctx, h1 = _record_contexts(enc.towers["vision"])
    states_b, h2 = _record_states(enc.towers[enc.streams[1]])
    out = enc(_streams(enc, _inputs("vit"), _inputs("bert")))
    for h in h1 + h2:
        h.remove()
    assert len(ctx) == 2 * 4
    for (i, _), (stage, y, key_mask) in ctx.items():
        torch.testing.assert_close(y, states_b[(i, TABLE[propagation][stage])], rtol=0, atol=1e-6)
        assert key_mask.dtype == torch.bool and torch.equal(key_mask, out.masks[_second(out)])


def test_moka_directions():
    bi = _encoder({"method": "moka", "rank": 4, "alpha": 2, "bidirectional": True})
    assert all(m.context_dim is not None for m in bi.modules() if isinstance(m, MoKALinear))
    ctx, handles = _record_contexts(bi.towers[bi.streams[1]])
    bi(_streams(bi, _inputs("vit"), _inputs("bert")))
    assert len(ctx) == 2 * 6 and all(km is None for _, _, km in ctx.values())  # vision keys: no padding
    av = _encoder({"method": "moka", "rank": 4, "alpha": 2}, b="ast")
    assert av.anchor is None
    assert all(m.context_dim == (32 if i < 8 else 64) for i, m in enumerate(_moka_layers(av)))
    anchored_a = _encoder({"method": "moka", "rank": 4, "alpha": 2}, anchor="vision")
    assert all(m.context_dim is None for m in anchored_a.towers["vision"].modules() if isinstance(m, MoKALinear))
    with pytest.raises(ValueError, match="anchor must be one of"):
        _encoder({"method": "moka"}, anchor="audio")


def _moka_layers(enc: DualEncoder) -> list[MoKALinear]:
    return [
        m for t in (enc.towers["vision"], enc.towers[enc.streams[1]]) for m in t.modules() if isinstance(m, MoKALinear)
    ]


# --------------------------------------------------------------------------------------------- gradients
def test_backward_reaches_exactly_the_trainable_parameters():
    enc = _encoder(_cola()).train()
    perturb(enc, seed=3)
    out = enc(_streams(enc, _inputs("vit"), _inputs("bert")))
    (out.tokens["vision"].square().mean() + out.tokens[_second(out)].square().mean()).backward()
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in enc.named_parameters() if p.grad is not None}
    assert trainable == with_grad
    assert trainable == {n for n, _ in enc.named_parameters() if is_adapter_param(n)}
    assert any(".cola_hypernet." in n for n in trainable) and any("cola_lambda" in n for n in trainable)
    zero = [n for n in trainable if not bool(enc.get_parameter(n).grad.abs().sum() > 0)]
    assert not zero


def test_conditions_are_not_detached():
    """A loss on stream a alone reaches stream b's adapters through the conditions b's states produce."""
    enc = _encoder(_cola()).train()
    perturb(enc, seed=3)
    out = enc(_streams(enc, _inputs("vit"), _inputs("bert")))
    out.tokens["vision"].square().mean().backward()
    grad = enc.towers[enc.streams[1]].blocks[0].attention.self.query.lora_A.grad
    assert grad is not None and bool(grad.abs().sum() > 0)


@pytest.mark.parametrize(
    ("peft", "b", "layer_map"),
    [
        (_cola(propagation="progressive"), "bert", None),
        (_cola(propagation="uniform", sharing="full"), "bert", None),
        ({"method": "moka", "rank": 4, "alpha": 2}, "bert", None),
        ({"method": "lora", "rank": 4, "alpha": 2}, "bert", None),
        (_cola(condition_pooling="cls"), "ast", "every_other"),  # lone blocks of the deeper tower too
    ],
    ids=["cola", "cola_full_uniform", "moka", "lora", "cola_every_other"],
)
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(peft, b, layer_map):
    results = []
    for ckpt in (False, True):
        enc = _dual(
            _tower("vit", 4 if layer_map else 2, seed=0),
            _tower(b, 2, seed=1),
            peft=dict(peft),
            targets_a=TARGETS["vit"],
            targets_b=TARGETS[b],
            out_splits_a=SPLITS["vit"],
            layer_map=layer_map,
            gradient_checkpointing=ckpt,
        ).train()
        perturb(enc, seed=3)
        recomputed = []
        handle = (
            enc.towers["vision"]
            .blocks[-1]
            .attn.qkv.register_forward_pre_hook(lambda m, a, seen=recomputed: seen.append(1))
        )
        out = enc(_streams(enc, _inputs("vit"), _inputs(b)), return_layers=[0])
        (
            out.tokens["vision"].square().mean()
            + out.tokens[_second(out)].square().mean()
            + out.layers[_second(out)][0].mean()
        ).backward()
        handle.remove()
        assert len(recomputed) == (2 if ckpt else 1)  # checkpointed steps run again in backward
        left = [m for m in enc.modules() if getattr(m, "_condition", None) is not None]
        left += [m for m in enc.modules() if isinstance(m, MoKALinear) and m._context is not None]
        assert not left  # no condition of this batch stays referenced after backward
        grads = {n: p.grad.clone() for n, p in enc.named_parameters() if p.requires_grad}
        results.append((out.tokens["vision"].detach(), out.tokens[_second(out)].detach(), grads))
    (ta0, tb0, g0), (ta1, tb1, g1) = results
    torch.testing.assert_close(ta1, ta0, rtol=0, atol=1e-6)
    torch.testing.assert_close(tb1, tb0, rtol=0, atol=1e-6)
    assert g0.keys() == g1.keys() and g0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7, msg=n)


def test_gradient_checkpointing_is_off_in_eval_and_without_grad():
    enc = _encoder(_cola(), gradient_checkpointing=True)
    enc.eval()
    with torch.no_grad():
        ref = enc(_streams(enc, _inputs("vit"), _inputs("bert"))).tokens["vision"]
    enc.train()
    with torch.no_grad():  # no autograd graph: nothing to recompute, plain forward
        torch.testing.assert_close(enc(_streams(enc, _inputs("vit"), _inputs("bert"))).tokens["vision"], ref)
    assert "gradient_checkpointing=True" in repr(enc)


def test_frozen_and_full_trainability():
    frozen = _encoder({"method": "frozen"})
    assert not any(p.requires_grad for p in frozen.parameters())
    full = _encoder({"method": "full"})
    assert all(p.requires_grad for p in full.parameters())
    assert str(frozen.report).startswith("peft method frozen: 0 adapter parameters")


def test_lora_param_matched_rank_and_counts():
    matched = _encoder(_cola(method="lora_param_matched", split_fused=True))
    cola = _encoder(_cola())
    rep = matched.report
    assert rep.params_cola == cola.report.params_added  # the CoLA count, computed without building CoLA
    assert rep.params_lora == rep.params_added and rep.lora_rank > 4
    lora_layers = [m for m in matched.modules() if isinstance(m, LoRALinear)]
    assert len(lora_layers) == 20 and all(m.config.rank == rep.lora_rank for m in lora_layers)
    assert all(m.scaling == pytest.approx(2 / 4) for m in lora_layers)  # alpha / r kept from the CoLA run
    below = _encoder({"method": "lora", "rank": rep.lora_rank - 1, "alpha": 1}).report.params_added
    above = _encoder({"method": "lora", "rank": rep.lora_rank + 1, "alpha": 1}).report.params_added
    assert abs(rep.params_lora - rep.params_cola) <= min(abs(below - rep.params_cola), abs(above - rep.params_cola))
    assert f"param-matched LoRA rank {rep.lora_rank}" in str(rep)


# --------------------------------------------------------------------------------------------- layer maps
def test_every_other_layer_map_vision_4_audio_2():
    a, b = _tower("vit", 4, seed=0), _tower("ast", 2, seed=1)
    ia, ib = _inputs("vit"), _inputs("ast")
    ref_a, ref_b = _reference(a, ia), _reference(b, ib)
    enc = _dual(
        a,
        b,
        peft=_cola(condition_pooling="cls", layer_map="every_other"),
        targets_a=TARGETS["vit"],
        targets_b=TARGETS["ast"],
        out_splits_a=SPLITS["vit"],
    ).eval()
    assert enc.layer_pairs == [(1, 0), (3, 1)]
    adapted = [any(isinstance(m, CoLALinear) for m in blk.modules()) for blk in enc.towers["vision"].blocks]
    assert adapted == [False, True, False, True]
    # the unpaired vision blocks get plain LoRA at the same rank and alpha (official), nothing else
    for i in (0, 2):
        layers = [
            m for m in enc.towers["vision"].blocks[i].modules() if isinstance(m, (LoRALinear, CoLALinear, MoKALinear))
        ]
        assert len(layers) == 4 and all(type(m) is LoRALinear for m in layers)
        assert all(m.config.rank == 4 and m.config.alpha == 2 for m in layers)
    assert all(any(isinstance(m, CoLALinear) for m in blk.modules()) for blk in enc.towers[enc.streams[1]].blocks)
    out = enc(_streams(enc, ia, ib))
    torch.testing.assert_close(out.tokens["vision"], ref_a, rtol=0, atol=TOL)
    torch.testing.assert_close(out.tokens[_second(out)], ref_b, rtol=0, atol=TOL)
    # Wiring: vision block 2k+1 and audio block k exchange their block inputs at the qkv stage.
    perturb(enc, seed=3)
    cond_a, h1 = _record_conditions(enc.towers["vision"])
    cond_b, h2 = _record_conditions(enc.towers[enc.streams[1]])
    out = enc(_streams(enc, ia, ib), return_layers={"vision": [0, 2], "audio": [0]})
    for h in h1 + h2:
        h.remove()
    audio_in = enc.towers[enc.streams[1]].embed(ib)[0]
    torch.testing.assert_close(cond_a[(1, "attn.qkv")][1], audio_in[:, 0])  # cls pooling
    torch.testing.assert_close(cond_a[(3, "attn.qkv")][1], out.layers[_second(out)][0][:, 0])
    torch.testing.assert_close(cond_b[(0, "attention.q_proj")][1], out.layers["vision"][0][:, 0])
    torch.testing.assert_close(cond_b[(1, "attention.q_proj")][1], out.layers["vision"][1][:, 0])
    assert {i for i, _ in cond_a} == {1, 3}


def test_layer_map_resolution_and_errors():
    assert resolve_layer_pairs("every_other", 2, 4) == [(0, 1), (1, 3)]
    assert resolve_layer_pairs(None, 3, 3) == [(0, 0), (1, 1), (2, 2)]
    assert resolve_layer_pairs([[1, 0], [3, 1]], 4, 2) == [(1, 0), (3, 1)]
    with pytest.raises(ValueError, match="exactly twice as deep"):
        resolve_layer_pairs("every_other", 3, 2)
    with pytest.raises(ValueError, match="increase strictly"):
        resolve_layer_pairs([[1, 1], [1, 0]], 4, 2)
    with pytest.raises(ValueError, match="out of range"):
        resolve_layer_pairs([[4, 0]], 4, 2)
    with pytest.raises(ValueError, match="every_other"):
        resolve_layer_pairs("alternate", 4, 2)


def test_explicit_layer_map_runs_unpaired_blocks_in_order():
    a, b = _tower("vit", 4, seed=0), _tower("bert", 2, seed=1)
    ia, ib = _inputs("vit"), _inputs("bert")
    ref_a, ref_b = _reference(a, ia), _reference(b, ib)
    enc = _dual(
        a, b, peft=_cola(), targets_a=TARGETS["vit"], targets_b=TARGETS["bert"], layer_map=[[0, 0], [2, 1]]
    ).eval()
    out = enc(_streams(enc, ia, ib))
    torch.testing.assert_close(out.tokens["vision"], ref_a, rtol=0, atol=TOL)
    torch.testing.assert_close(out.tokens[_second(out)], ref_b, rtol=0, atol=TOL)


def test_depth_mismatch_without_layer_map_names_both_depths():
    with pytest.raises(ValueError, match=r"a: 4 blocks, b: 2 blocks"):
        _encoder(_cola(), depth_a=4, depth_b=2)


def test_layers_selects_adapted_pairs():
    enc = _encoder(_cola(layers=[1]))
    ia, ib = _inputs("vit"), _inputs("bert")
    assert enc.adapted_pairs == [1]
    for tower in (enc.towers["vision"], enc.towers[enc.streams[1]]):
        assert [any(isinstance(m, CoLALinear) for m in blk.modules()) for blk in tower.blocks] == [False, True]
    perturb(enc, seed=3)
    cond, handles = _record_conditions(enc.towers["vision"])
    enc(_streams(enc, ia, ib))
    assert {i for i, _ in cond} == {1}
    assert _encoder(_cola(), layers=[-1]).adapted_pairs == [1]  # the argument wins over peft["layers"]
    with pytest.raises(ValueError, match="peft.layers entries"):
        _encoder(_cola(layers=[2]))


def test_return_layers_shapes():
    enc = _encoder(_cola())
    out = enc(_streams(enc, _inputs("vit", batch=2), _inputs("bert", batch=2)), return_layers=[0, -1])
    assert [t.shape for t in out.layers["vision"]] == [(2, 5, 64), (2, 5, 64)]
    assert [t.shape for t in out.layers[_second(out)]] == [(2, 7, 32), (2, 7, 32)]
    torch.testing.assert_close(
        enc.towers["vision"].finalize(out.layers["vision"][-1]), out.tokens["vision"]
    )  # raw block outputs
    torch.testing.assert_close(out.layers[_second(out)][-1], out.tokens[_second(out)])  # BERT has no final norm
    assert enc(_streams(enc, _inputs("vit"), _inputs("bert"))).layers == {}
    with pytest.raises(ValueError, match=r"return_layers\[.vision.\] entries"):
        enc(_streams(enc, _inputs("vit"), _inputs("bert")), return_layers=[2])


def test_peft_dict_errors():
    with pytest.raises(ValueError, match="peft.method must be one of"):
        _encoder({"method": "adapter"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rnak'\]"):
        _encoder(_cola(rnak=4))
    with pytest.raises(ValueError, match="propagation must be one of"):
        _encoder(_cola(propagation="progresive"))
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        _dual(_tower("vit"), _tower("bert"), peft=_cola(), targets_a=["attn.qkvv"], targets_b=TARGETS["bert"])


# --------------------------------------------------------------------------------------------- official settings
def test_every_other_counts_and_lora_adapts_every_block():
    def enc(peft):
        return _dual(
            _tower("vit", 4, seed=0),
            _tower("ast", 2, seed=1),
            peft={**peft, "layer_map": "every_other"},
            targets_a=TARGETS["vit"],
            targets_b=TARGETS["ast"],
            out_splits_a=SPLITS["vit"],
        )

    lora = enc({"method": "lora", "rank": 4, "alpha": 2})
    assert all(any(isinstance(m, LoRALinear) for m in blk.modules()) for blk in lora.towers["vision"].blocks)
    cola = enc(_cola(condition_pooling="cls"))
    lone = sum(r.params_added for r in (lora.report.towers["vision"],)) // 2  # LoRA params of 2 of the 4 vision blocks
    counted = {
        n for n, m in cola.towers["vision"].model.named_modules() if isinstance(m, LoRALinear) and type(m) is LoRALinear
    }
    assert len(counted) == 8  # 2 unpaired blocks x 4 targets
    matched = enc({**_cola(condition_pooling="cls"), "method": "lora_param_matched"})
    # the CoLA count it matches includes the unpaired blocks' LoRA
    assert matched.report.params_cola == cola.report.params_added
    assert lone > 0 and matched.report.params_cola > lone


def test_per_stream_reduction_and_pooling():
    """Official AVS: vision layers' hypernets d_c / 16, audio layers' d_c / 8 (here 32 / 4 and 64 / 2); the audio
    layers are conditioned on the mean of the vision tokens, the vision layers on the audio CLS."""
    enc = _encoder(
        _cola(reduction={"vision": 4, "audio": 2}, condition_pooling={"vision": "mean", "audio": "cls"}), b="ast"
    )
    for m in enc.towers["vision"].model.modules():
        if isinstance(m, CoLALinear):
            nets = m.cola_hypernet if isinstance(m.cola_hypernet, nn.ModuleList) else [m.cola_hypernet]
            assert all(n.fc1.in_features == 32 and n.fc1.out_features == 8 for n in nets)
    for m in enc.towers[enc.streams[1]].model.modules():
        if isinstance(m, CoLALinear):
            assert m.cola_hypernet.fc1.in_features == 64 and m.cola_hypernet.fc1.out_features == 32
    perturb(enc, seed=3)
    ia, ib = _inputs("vit"), _inputs("ast")
    cond_a, h1 = _record_conditions(enc.towers["vision"])
    cond_b, h2 = _record_conditions(enc.towers[enc.streams[1]])
    enc(_streams(enc, ia, ib))
    for h in h1 + h2:
        h.remove()
    xa, mask_a = enc.towers["vision"].embed(ia)
    xb, _ = enc.towers[enc.streams[1]].embed(ib)
    # block 0: the audio qkv condition is the vision mean (prefix excluded), the vision qkv condition the audio CLS;
    # a CLS condition would be the same for every sample at block 0, a mean is not
    torch.testing.assert_close(
        cond_b[(0, "attention.q_proj")][1], _masked_mean(xa, mask_a, enc.towers["vision"].num_prefix_tokens)
    )
    torch.testing.assert_close(cond_a[(0, "attn.qkv")][1], xb[:, 0])
    assert not torch.allclose(cond_b[(0, "attention.q_proj")][1][0], cond_b[(0, "attention.q_proj")][1][1])


def test_per_stream_mapping_must_name_each_stream():
    with pytest.raises(ValueError, match=r"reduction has no entry for the audio stream"):
        _encoder(_cola(reduction={"vision": 4}), b="ast")
    with pytest.raises(ValueError, match=r"condition_pooling has no entry for the text stream"):
        _encoder(_cola(condition_pooling={"vision": "mean"}))
    with pytest.raises(ValueError, match=r"reduction has unknown stream 'visual'"):
        _encoder(_cola(reduction={"visual": 4, "audio": 2}), b="ast")


def test_shuffled_control_takes_the_condition_of_another_video():
    """Rows come in groups of T seconds per video: the shuffled condition of row i is row i + T's (same second of
    the next video), never another second of the same video."""
    T, videos = 3, 2
    pooling = {"vision": "mean", "audio": "cls"}  # a vision CLS is the same for every row at block 0
    pooled = _encoder(_cola(condition_pooling=pooling), b="ast")
    shuffled = _encoder(_cola(condition_pooling=pooling, condition="shuffled"), b="ast")
    shuffled.load_state_dict(pooled.state_dict())
    ia, ib = _inputs("vit", batch=T * videos), _inputs("ast", batch=T * videos)
    seen = {}

    def hook(mod, args):
        seen["c"] = mod._effective_condition(mod._condition).detach().clone()

    layer = shuffled.towers[shuffled.streams[1]].blocks[0].get_submodule("attention.q_proj")
    handle = layer.register_forward_pre_hook(hook)
    shuffled(_streams(shuffled, ia, ib), rows_per_sample=T)
    handle.remove()
    xa, mask_a = shuffled.towers["vision"].embed(ia)
    xa = _masked_mean(xa, mask_a, shuffled.towers["vision"].num_prefix_tokens)  # vision mean per row at block 0
    torch.testing.assert_close(seen["c"], torch.roll(xa, -T, 0))
    for i in range(T * videos):  # never a row of the same video
        j = next(k for k in range(T * videos) if torch.equal(seen["c"][i], xa[k]))
        assert j // T != i // T
    with pytest.raises(ValueError, match="needs a batch of >= 2 samples"):
        shuffled(_streams(shuffled, _inputs("vit", batch=T), _inputs("ast", batch=T)), rows_per_sample=T)


def test_state_dicts_with_letter_named_towers_still_load():
    """Checkpoints and adapter files written when the towers were ``tower_a`` / ``tower_b`` load into the
    stream-named encoder (``towers.vision`` / ``towers.text``)."""
    from cola.peft import adapter_state_dict, load_adapter_state_dict

    src = _encoder(_cola())
    perturb(src, seed=3)
    new = src.state_dict()
    old = {k.replace("towers.vision.", "tower_a.").replace("towers.text.", "tower_b."): v for k, v in new.items()}
    assert any(k.startswith("tower_a.") for k in old) and not any(k.startswith("towers.") for k in old)
    dst = _encoder(_cola())
    dst.load_state_dict(old)  # the pre-hook renames
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in new.items())
    wrapper = nn.Module()
    wrapper.encoder = _encoder(_cola())
    adapters = {f"encoder.{k}": v for k, v in adapter_state_dict(src).items()}
    old_adapters = {
        k.replace("towers.vision.", "tower_a.").replace("towers.text.", "tower_b."): v for k, v in adapters.items()
    }
    load_adapter_state_dict(wrapper, old_adapters)
    assert all(torch.equal(v, wrapper.state_dict()[k]) for k, v in adapters.items())
