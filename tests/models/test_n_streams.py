"""The encoder with N streams (issue 17): N = 2 is exactly the stored two-stream behaviour; with three towers each
adapted layer's condition comes from exactly its source streams, fused as ``peft.condition_fusion`` says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from cola.models import DualEncoder, build_tower, family_out_splits, family_targets
from cola.models.lockstep import match_rows, pool_tokens, pooling_weights, resolve_layer_groups, resolve_sources
from cola.models.placement import stage_groups
from cola.peft import CoLALinear, MoKALinear

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "encoder" / "two_stream_reference.py"


def _reference_module():
    spec = importlib.util.spec_from_file_location("cola_two_stream_reference", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


REF = _reference_module()


@pytest.mark.parametrize("case", list(REF.CASES))
def test_two_streams_equal_the_stored_outputs_and_gradients(case):
    stored = REF.load()
    got = REF.run_case(case)
    assert set(got) == {k for k in stored if k.startswith(f"{case}/")}  # same parameters, same names
    for key, value in got.items():
        torch.testing.assert_close(value, stored[key], rtol=1e-9, atol=1e-10, msg=key)


# ------------------------------------------------------------------------------------------- three towers
WIDTH = {"vit": 32, "ast": 32, "bert": 48}


def _tower(family: str, seed: int):
    torch.manual_seed(seed)
    if family == "vit":
        t = build_tower(family="vit", name="vit_small_patch14_dinov2", img_size=28, embed_dim=32, depth=2, num_heads=2)
    else:
        tiny = dict(hidden_size=WIDTH[family], num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        t = build_tower(family=family, tiny={**tiny, "vocab_size": 100} if family == "bert" else tiny)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in t.model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return t.eval()


def _three(peft: dict, **kw) -> DualEncoder:
    towers = {"vision": _tower("vit", 0), "audio": _tower("ast", 1), "text": _tower("bert", 2)}
    enc = DualEncoder(
        towers,
        peft=peft,
        targets={s: family_targets(t.family) for s, t in towers.items()},
        out_splits={s: family_out_splits(t.family) for s, t in towers.items()},
        **kw,
    )
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for n, p in enc.named_parameters():
            if p.requires_grad and n.rsplit(".", 1)[-1] in ("lora_B", "cola_B", "moka_B"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return enc.eval()


def _inputs(seed: int = 0, rows: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0
    return {
        "vision": {"pixel_values": torch.randn(2 * rows, 3, 28, 28, generator=g)},
        "audio": {"input_values": torch.randn(2 * rows, 100, 128, generator=g)},
        "text": {"input_ids": torch.randint(1, 100, (2, 6), generator=g), "attention_mask": mask},
    }


def _record_conditions(enc: DualEncoder) -> dict[str, torch.Tensor]:
    """Every CoLA layer's condition of one forward, by qualified name."""
    seen: dict[str, torch.Tensor] = {}
    for s, tower in enc.towers.items():
        for name, m in tower.model.named_modules():
            if isinstance(m, CoLALinear):
                m.register_forward_pre_hook(lambda mod, args, key=f"{s}.{name}": seen.__setitem__(key, mod._condition))
    return seen


COLA = {"method": "cola", "rank": 4, "alpha": 2, "reduction": 4, "condition_pooling": "mean"}


def _first_qkv_conditions(enc: DualEncoder) -> dict[str, torch.Tensor]:
    """The condition each stream's first-block q/k/v layers receive: pooled from the other streams' embeddings
    (later stages and blocks also see what the other streams' adapters made of this stream's own input)."""
    seen: dict[str, torch.Tensor] = {}
    for s, tower in enc.towers.items():
        for m in stage_groups(tower, 0)["qkv"]:
            m.register_forward_pre_hook(lambda mod, args, s=s: seen.__setitem__(s, mod._condition))
    return seen


@pytest.mark.parametrize("fusion", ["concat", "per_stream"])
@pytest.mark.parametrize("perturbed", ["vision", "audio", "text"])
def test_each_condition_comes_from_exactly_the_other_streams(fusion, perturbed):
    """Perturb one stream's input: the first-block conditions of the two other streams change, its own do not, and
    each equals the concatenation of its sources' pooled embeddings, computed by hand."""
    enc = _three({**COLA, "condition_fusion": fusion})
    seen = _first_qkv_conditions(enc)
    with torch.no_grad():
        enc(_inputs(0))
        before = {k: v.clone() for k, v in seen.items()}
        x = _inputs(0)
        x[perturbed] = _inputs(1)[perturbed]
        enc(x)
        pooled = {}
        for s, tower in enc.towers.items():
            h, mask = tower.embed(x[s])
            pooled[s] = pool_tokens(h, pooling_weights(mask, tower.num_prefix_tokens, "mean"))
    assert set(seen) == {"vision", "audio", "text"}
    for s, c in seen.items():
        assert torch.equal(c, before[s]) == (s == perturbed), s
        want = torch.cat([pooled[o] for o in ("vision", "audio", "text") if o != s], dim=-1)
        torch.testing.assert_close(c, want, rtol=1e-6, atol=1e-6)


def test_concat_and_per_stream_widths_and_parameters():
    concat = _three({**COLA, "condition_fusion": "concat"})
    per = _three({**COLA, "condition_fusion": "per_stream"})
    layer = concat.towers["vision"].model.blocks[0].mlp.fc1
    assert layer.context_dim == 32 + 48  # audio + text
    per_layer = per.towers["vision"].model.blocks[0].mlp.fc1
    assert per_layer.context_dim == 32 + 48 and len(per_layer.cola_hypernet.nets) == 2  # one per source
    text_layer = per.towers["text"].model.encoder.layer[0].intermediate.dense
    assert text_layer.context_dim == 64  # vision + audio
    for enc in (concat, per):  # the report counts what was built
        built = sum(p.numel() for n, p in enc.named_parameters() if p.requires_grad)
        assert built == sum(r.params_added for r in enc.report.towers.values())


def test_per_stream_is_the_sum_of_one_hypernetwork_per_source():
    enc = _three({**COLA, "condition_fusion": "per_stream"})
    layer = enc.towers["vision"].model.blocks[0].mlp.fc1
    c = torch.randn(3, 80)
    phi = layer.cola_hypernet(c)
    nets = layer.cola_hypernet.nets
    torch.testing.assert_close(phi, nets[0](c[:, :32]) + nets[1](c[:, 32:]), rtol=1e-6, atol=1e-6)


def test_mean_fusion_needs_equal_widths_and_averages():
    with pytest.raises(ValueError, match="condition_fusion=mean.*widths differ"):
        _three({**COLA, "condition_fusion": "mean"})  # vision's sources: audio 32, text 48
    sources = {"vision": ["audio"], "audio": ["vision"], "text": ["vision", "audio"]}
    enc = _three({**COLA, "condition_fusion": "mean", "condition_sources": sources})
    assert enc.towers["text"].model.encoder.layer[0].intermediate.dense.context_dim == 32
    seen = _first_qkv_conditions(enc)
    x = _inputs(0)
    with torch.no_grad():
        enc(x)
        pooled = {}
        for s in ("vision", "audio"):
            h, mask = enc.towers[s].embed(x[s])
            pooled[s] = pool_tokens(h, pooling_weights(mask, enc.towers[s].num_prefix_tokens, "mean"))
    torch.testing.assert_close(seen["text"], (pooled["vision"] + pooled["audio"]) / 2, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(seen["vision"], pooled["audio"], rtol=1e-6, atol=1e-6)


def test_condition_sources_select_streams():
    """condition_sources={vision: [audio], audio: [vision]}: text no longer reaches the vision/audio layers."""
    enc = _three({**COLA, "condition_sources": {"vision": ["audio"], "audio": ["vision"]}})
    seen = _record_conditions(enc)
    with torch.no_grad():
        enc(_inputs(0))
        before = {k: v.clone() for k, v in seen.items()}
        x = _inputs(0)
        x["text"] = _inputs(1)["text"]
        enc(x)
    for key, c in seen.items():
        if not key.startswith("text."):
            assert torch.allclose(c, before[key]), key
    with pytest.raises(ValueError, match="condition_sources.vision must be a non-empty list"):
        _three({**COLA, "condition_sources": {"vision": ["vision"]}})
    with pytest.raises(ValueError, match="unknown stream 'depth'"):
        _three({**COLA, "condition_sources": {"depth": ["audio"]}})


def test_rows_per_sample_per_stream_match_conditions():
    """Video streams with T rows per question, text with one: text conditions average the T rows, the video
    layers get the question's condition repeated."""
    enc = _three(COLA)
    seen = _record_conditions(enc)
    with torch.no_grad():
        out = enc(_inputs(0, rows=3), rows_per_sample={"vision": 3, "audio": 3, "text": 1})
    assert out.tokens["vision"].shape[0] == 6 and out.tokens["text"].shape[0] == 2
    for key, c in seen.items():
        assert c.shape[0] == (2 if key.startswith("text.") else 6), key
    c = torch.arange(12.0).reshape(6, 2)
    torch.testing.assert_close(match_rows(c, 3, 1), c.reshape(2, 3, 2).mean(1))
    torch.testing.assert_close(match_rows(c[:2], 1, 3), c[:2].repeat_interleave(3, 0))


def test_lora_and_moka_run_three_streams():
    # LoRA: each tower runs its own adapters (B made non-zero by _three) and takes nothing from the other streams.
    # Tokens are |t| < 5 after the final norm: an unchanged stream is equal up to a reordered float32 sum (a few ulps
    # of 4.8e-7), atol 1e-5; a tower's adapter term moves its tokens by ~1 (0.86 to 1.08 measured), far above 0.1.
    lora = _three({"method": "lora", "rank": 4, "alpha": 2})
    with torch.no_grad():
        out = lora(_inputs(0)).tokens
        x = _inputs(0)
        x["text"] = _inputs(1)["text"]
        other_question = lora(x).tokens
        without = {}  # stream -> tokens with that tower's lora_B zeroed (its adapters off)
        for s in out:
            ups = [p for n, p in lora.towers[s].named_parameters() if n.endswith("lora_B")]
            saved = [p.clone() for p in ups]
            for p in ups:
                p.zero_()
            without[s] = lora(_inputs(0)).tokens
            for p, value in zip(ups, saved, strict=True):
                p.copy_(value)
    assert set(out) == {"vision", "audio", "text"}
    for s in ("vision", "audio"):  # another question changes the text tokens only
        torch.testing.assert_close(other_question[s], out[s], rtol=0, atol=1e-5)
    assert (other_question["text"] - out["text"]).abs().max() > 0.1
    for s, tokens in without.items():
        assert (tokens[s] - out[s]).abs().max() > 0.1, s
        for other in set(out) - {s}:
            torch.testing.assert_close(tokens[other], out[other], rtol=0, atol=1e-5, msg=f"{s} adapters reach {other}")
    moka = _three({"method": "moka", "rank": 4, "alpha": 2, "dropout": 0.0}, anchor="text")
    contexts = {}
    for s, tower in moka.towers.items():
        for name, m in tower.model.named_modules():
            if isinstance(m, MoKALinear) and m.context_dim is not None:
                m.register_forward_pre_hook(lambda mod, a, k=f"{s}.{name}": contexts.__setitem__(k, mod._context))
    with torch.no_grad():
        moka(_inputs(0))
    assert contexts and all(k.split(".")[0] in ("vision", "audio") for k in contexts)  # they query the text anchor
    assert all(v[0].shape[-1] == 48 for v in contexts.values())
    with pytest.raises(ValueError, match="anchor"):
        _three({"method": "moka", "rank": 4, "alpha": 2}, anchor=None)


def test_layer_groups_for_three_towers():
    assert resolve_layer_groups(None, {"vision": 2, "audio": 2, "text": 2}) == [(0, 0, 0), (1, 1, 1)]
    groups = resolve_layer_groups({"audio": "every_other"}, {"vision": 4, "audio": 2, "text": 4})
    assert groups == [(1, 0, 1), (3, 1, 3)]
    with pytest.raises(ValueError, match="different depths"):
        resolve_layer_groups(None, {"vision": 4, "audio": 2, "text": 4})
    with pytest.raises(ValueError, match="mapping"):
        resolve_layer_groups("every_other", {"vision": 4, "audio": 2, "text": 4})
    assert resolve_sources(["vision", "audio", "text"], None, exchange="condition", anchor=None) == {
        "vision": ["audio", "text"],
        "audio": ["vision", "text"],
        "text": ["vision", "audio"],
    }
