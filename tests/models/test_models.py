"""cola.models encoders and block steps: staged blocks reproduce each backbone's own forward; builders load
weights and adapt AST to 1-s clips. Tiny random towers, plus the pip-shipped MiniLM BERT (no network)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cola.models import (
    ASTLayerSteps,
    BertLayerSteps,
    Tower,
    ViTBlockSteps,
    build_ast,
    build_bert,
    build_tower,
    build_vit,
    family_targets,
    minilm_path,
    resize_ast_position_embeddings,
)
from tests.models.conftest import reference_forward as _reference
from tests.models.conftest import tower_inputs as _inputs

TINY_VIT = dict(name="vit_small_patch14_dinov2", img_size=28, embed_dim=64, depth=2, num_heads=2)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100)
TINY_AST = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
TOL = 1e-6


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (HF zero-inits AST positional embeddings, timm layer scale is 1e-5)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _tower(family: str, seed: int = 0, **kw) -> Tower:
    torch.manual_seed(seed)
    if family == "vit":
        tower = build_tower(family="vit", **{**TINY_VIT, **kw})
    elif family == "bert":
        tower = build_tower(family="bert", tiny={**TINY_BERT, **kw})
    else:
        tower = build_tower(family="ast", tiny={**TINY_AST, **kw})
    _randomize(tower.model, seed)
    return tower


# --------------------------------------------------------------------------------------------- block steps
@pytest.mark.parametrize("family", ["vit", "bert", "ast"])
def test_block_steps_reproduce_block_forward(family):
    tower = _tower(family).eval()
    x, mask = tower.embed(_inputs(family))
    x = x + torch.randn_like(x)  # arbitrary hidden states, not just embeddings
    attn_mask = tower.attention_mask(x, mask)
    for block in tower.blocks:
        ref = block(x) if family == "vit" else block(x, attn_mask)
        ctx = tower.steps.attention_context(block, x, attn_mask)
        assert ctx.shape == x.shape  # (B, N, C)
        x_attn = tower.steps.attention_out(block, x, ctx)
        out = tower.steps.mlp_out(block, x_attn)
        torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
        x = ref


@pytest.mark.parametrize("family", ["vit", "bert", "ast"])
def test_tower_forward_matches_model_forward(family):
    tower = _tower(family).eval()
    inputs = _inputs(family)
    tokens, mask = tower(inputs)
    torch.testing.assert_close(tokens, _reference(tower, inputs), rtol=0, atol=TOL)
    assert mask.dtype == torch.bool and mask.shape == tokens.shape[:2]
    if family == "bert":
        assert mask.sum(1).tolist() == [4, 6, 7]
    else:
        assert bool(mask.all())


@pytest.mark.parametrize("family", ["vit", "bert", "ast"])
def test_block_steps_match_in_train_mode_with_dropout(family):
    """Same RNG consumption order as the block's forward: dropout / drop-path masks coincide."""
    kw = {
        "vit": dict(drop_rate=0.2, attn_drop_rate=0.2, proj_drop_rate=0.2, drop_path_rate=0.3),
        "bert": dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2),
        "ast": dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2),
    }[family]
    tower = _tower(family, **kw).train()
    x, mask = tower.embed(_inputs(family))
    attn_mask = tower.attention_mask(x, mask)
    block = tower.blocks[-1]
    torch.manual_seed(123)
    ref = block(x) if family == "vit" else block(x, attn_mask)
    torch.manual_seed(123)
    out = tower.steps(block, x, attn_mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL)
    torch.manual_seed(124)
    assert not torch.allclose(tower.steps(block, x, attn_mask), ref)  # dropout is really active


def test_vit_block_steps_unfused_attention_and_registers():
    tower = _tower("vit", name="vit_small_patch14_reg4_dinov2").eval()
    assert tower.num_prefix_tokens == 5  # cls + 4 registers
    for block in tower.blocks:
        block.attn.fused_attn = False  # timm's explicit softmax path
    inputs = _inputs("vit")
    tokens, _ = tower(inputs)
    assert tokens.shape == (3, 5 + 4, 64)
    torch.testing.assert_close(tokens, _reference(tower, inputs), rtol=0, atol=TOL)


def test_bert_block_steps_eager_attention():
    torch.manual_seed(0)
    tower = Tower(build_bert(tiny=TINY_BERT, attn_implementation="eager"), "bert").eval()
    _randomize(tower.model)
    assert tower.model.config._attn_implementation == "eager"
    inputs = _inputs("bert")
    torch.testing.assert_close(tower(inputs)[0], _reference(tower, inputs), rtol=0, atol=TOL)


def test_block_steps_on_real_minilm_bert():
    model = build_bert(name_or_path="minilm").eval()
    tower = Tower(model, "bert")
    assert (tower.depth, tower.hidden_size, tower.num_prefix_tokens) == (6, 384, 1)
    ids = torch.tensor([[101, 1037, 2417, 3899, 102, 0, 0], [101, 1996, 2187, 2158, 2006, 1037, 102]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    tokens, mask = tower(inputs)
    torch.testing.assert_close(tokens, _reference(tower, inputs), rtol=0, atol=1e-5)
    assert mask.tolist()[0] == [True] * 5 + [False] * 2


# --------------------------------------------------------------------------------------------- stages & tower
@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("vit", {"attn.qkv": "qkv", "attn.proj": "proj", "mlp.fc1": "mlp", "mlp.fc2": "mlp"}),
        (
            "bert",
            {
                "attention.self.query": "qkv",
                "attention.self.key": "qkv",
                "attention.self.value": "qkv",
                "attention.output.dense": "proj",
                "intermediate.dense": "mlp",
                "output.dense": "mlp",
            },
        ),
        (
            "ast",
            {
                "attention.q_proj": "qkv",
                "attention.k_proj": "qkv",
                "attention.v_proj": "qkv",
                "attention.o_proj": "proj",
                "mlp.fc1": "mlp",
                "mlp.fc2": "mlp",
            },
        ),
    ],
)
def test_stage_of_every_linear_of_a_block(family, expected):
    tower = _tower(family)
    linears = {n for n, m in tower.blocks[0].named_modules() if isinstance(m, nn.Linear)}
    assert linears == set(expected)  # the installed libraries' module names (docs/method.md#targets)
    assert {n: tower.stage_of(n) for n in linears} == expected
    assert family_targets(family) == list(expected)  # the family's default targets: every linear, paper order
    assert tower.stage_of(next(iter(expected)) + ".base_layer") == expected[next(iter(expected))]
    with pytest.raises(ValueError, match="belongs to no stage"):
        tower.stage_of("pooler.dense")


def test_tower_properties_and_errors():
    vit, bert, ast = _tower("vit"), _tower("bert"), _tower("ast")
    assert (vit.family, vit.num_prefix_tokens, vit.hidden_size, vit.depth) == ("vit", 1, 64, 2)
    assert (bert.family, bert.num_prefix_tokens, bert.hidden_size, bert.has_padding) == ("bert", 1, 32, True)
    assert (ast.family, ast.num_prefix_tokens, ast.hidden_size, ast.has_padding) == ("ast", 2, 32, False)
    assert isinstance(vit.steps, ViTBlockSteps) and isinstance(bert.steps, BertLayerSteps)
    assert isinstance(ast.steps, ASTLayerSteps)
    assert vit.block_names() == ["blocks.0", "blocks.1"]
    assert bert.block_names() == ["encoder.layer.0", "encoder.layer.1"]
    with pytest.raises(ValueError, match="'pixel_values'"):
        vit.embed({"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(ValueError, match=r"\(B, 100, 128\)"):
        ast.embed({"input_values": torch.zeros(1, 50, 128)})
    with pytest.raises(ValueError, match="family 'bert' expects"):
        Tower(vit.model, "bert")
    with pytest.raises(ValueError, match="family must be one of"):
        Tower(vit.model, "swin")
    with pytest.raises(ValueError, match="family must be one of"):
        build_tower(family="clip")


def test_vit_final_norm_is_applied():
    tower = _tower("vit").eval()
    x, _ = tower.embed(_inputs("vit"))
    torch.testing.assert_close(tower.finalize(x), tower.model.norm(x))
    bert = _tower("bert")
    x = torch.randn(2, 3, 32)
    assert torch.equal(bert.finalize(x), x)  # BERT is post-norm: no final norm


# --------------------------------------------------------------------------------------------- builders
def test_build_vit_tiny_and_errors():
    model = build_vit(**TINY_VIT)
    assert model.patch_embed.grid_size == (2, 2) and model.num_classes == 0
    assert model.pos_embed.shape == (1, 1 + 4, 64)
    with pytest.raises(ValueError, match="not a timm model"):
        build_vit(name="vit_nonexistent_patch99")
    with pytest.raises(FileNotFoundError, match="no weight file"):
        build_vit(**TINY_VIT, checkpoint_path="/nonexistent/dinov2.pth")


def test_build_vit_checkpoint_path_loads_and_resamples(tmp_path):
    torch.manual_seed(0)
    src = build_vit(**TINY_VIT)
    _randomize(src)
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    same = build_vit(**TINY_VIT, checkpoint_path=path)
    for (n, p), (_, q) in zip(src.state_dict().items(), same.state_dict().items()):
        assert torch.equal(p, q), n
    bigger = build_vit(**{**TINY_VIT, "img_size": 42}, checkpoint_path=path)  # 2x2 -> 3x3 patches
    assert bigger.pos_embed.shape == (1, 1 + 9, 64)
    torch.testing.assert_close(bigger.pos_embed[:, :1], src.pos_embed[:, :1])  # cls position kept
    torch.testing.assert_close(bigger.blocks[1].mlp.fc2.weight, src.blocks[1].mlp.fc2.weight)
    with pytest.raises(ValueError, match="does not fit timm model"):
        build_vit(**{**TINY_VIT, "embed_dim": 32}, checkpoint_path=path)


def test_build_bert_sources():
    model = build_bert(tiny=TINY_BERT)
    assert model.pooler is None and model.config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="exactly one of name_or_path"):
        build_bert()
    with pytest.raises(ValueError, match="exactly one of name_or_path"):
        build_bert(name_or_path="bert-base-uncased", tiny=TINY_BERT)
    with pytest.raises(FileNotFoundError, match="no model folder"):
        build_bert(name_or_path="/nonexistent/bert")


def test_minilm_path_is_a_bert_folder():
    from pathlib import Path

    folder = Path(minilm_path())
    assert (folder / "config.json").is_file() and (folder / "vocab.txt").is_file()


def test_build_ast_tiny_runs_on_one_second_clips():
    model = build_ast(tiny=TINY_AST).eval()
    assert (model.config.max_length, model.config.num_mel_bins) == (100, 128)
    out = model(torch.randn(2, 100, 128)).last_hidden_state
    assert out.shape == (2, 2 + 12 * 9, 32)  # 12 frequency x 9 time patches + cls + distillation
    tower = Tower(model, "ast")
    tokens, _ = tower({"input_values": torch.randn(2, 100, 128)})
    assert tokens.shape == (2, 110, 32) and torch.isfinite(tokens).all()
    with pytest.raises(ValueError, match="conflicts"):
        build_ast(tiny={**TINY_AST, "max_length": 1024})


def _saved_ast(tmp_path, max_length: int = 200):
    """A tiny 'pretrained' AST with 2-s inputs and a position grid that is constant along time per row."""
    torch.manual_seed(0)
    model = build_ast(tiny=TINY_AST, max_length=max_length)
    _randomize(model)
    f, t = 12, (max_length - 16) // 10 + 1
    with torch.no_grad():
        rows = torch.randn(1, f, 1, 32).expand(1, f, t, 32)
        model.embeddings.position_embeddings[:, 2:] = rows.reshape(1, f * t, 32)
    model.save_pretrained(tmp_path)
    return model, f, t


def test_build_ast_pretrained_interpolates_time_axis(tmp_path):
    src, f, t = _saved_ast(tmp_path)
    model = build_ast(name_or_path=str(tmp_path), max_length=100).eval()
    pos, old = model.embeddings.position_embeddings, src.embeddings.position_embeddings
    assert (t, pos.shape, model.config.max_length) == (19, (1, 2 + f * 9, 32), 100)
    torch.testing.assert_close(pos[:, :2], old[:, :2])  # cls + distillation kept
    grid = pos[:, 2:].reshape(f, 9, 32)
    torch.testing.assert_close(grid, old[:, 2:].reshape(f, t, 32)[:, :1].expand(f, 9, 32))  # rows stay constant
    torch.testing.assert_close(model.layers[1].mlp.fc1.weight, src.layers[1].mlp.fc1.weight)
    out = model(torch.randn(2, 100, 128)).last_hidden_state
    assert out.shape == (2, 110, 32) and torch.isfinite(out).all()


def test_ast_position_resize_crop_and_errors(tmp_path):
    src, f, t = _saved_ast(tmp_path)
    with torch.no_grad():  # make columns distinguishable to check the centre crop
        src.embeddings.position_embeddings[:, 2:] = torch.randn(1, f * t, 32)
    old = src.embeddings.position_embeddings.detach().clone()
    resize_ast_position_embeddings(src, 100, mode="crop")
    start = t // 2 - 9 // 2
    expected = old[:, 2:].reshape(f, t, 32)[:, start : start + 9]
    torch.testing.assert_close(src.embeddings.position_embeddings[:, 2:].reshape(f, 9, 32), expected)
    with pytest.raises(ValueError, match="cannot lengthen"):
        resize_ast_position_embeddings(src, 300, mode="crop")
    assert src.config.max_length == 100  # unchanged by the failed call
    with pytest.raises(ValueError, match="pos_embed_resize must be one of"):
        resize_ast_position_embeddings(src, 100, mode="nearest")
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        build_ast(name_or_path=str(tmp_path), num_mel_bins=64)


def test_family_targets_select_by_stage():
    from cola.models import family_out_splits

    assert family_targets("vit") == ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]
    assert family_targets("bert", ["proj"]) == ["attention.output.dense"]
    assert family_targets("ast", "mlp") == ["mlp.fc1", "mlp.fc2"]  # one stage given as a string
    assert family_out_splits("vit") == {"attn.qkv": 3} and family_out_splits("bert") == {}
    with pytest.raises(ValueError, match=r"family must be one of \['ast', 'bert', 'vit'\], got 'swin'"):
        family_targets("swin")
    with pytest.raises(ValueError, match=r"model.target_stages must be a subset of .*got \['ffn'\]"):
        family_targets("vit", ["ffn"])
