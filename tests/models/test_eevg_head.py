"""The official grounding head (``task.head.name=official``, :mod:`cola.models.heads.eevg`): forward against a plain
re-derivation, the elimination step by hand, the init and the parameter count at the paper's size."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cola.models.heads.eevg import EEVGHead, neighbour_index, select_tokens
from cola.models.heads.grounding import HeadGeometry

VISION, TEXT, PREFIX, GRID, SIZE, MAXLEN = 24, 20, 1, 4, 32, 6
GEOMETRY = HeadGeometry(VISION, TEXT, PREFIX, GRID, SIZE, MAXLEN)


def _head(**kw) -> EEVGHead:
    args = dict(width=16, layers=2, ff=24, heads=4, dropout=0.0, eliminate=False)
    args.update(kw)
    return EEVGHead(GEOMETRY, **args).double().eval()


def _inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(batch, PREFIX + GRID * GRID, VISION, generator=g, dtype=torch.float64)
    text = torch.randn(batch, 5, TEXT, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]][:batch])
    return vision, text, mask


def _attend(attn, q_in, k_in, v_in, pad=None):
    """Multi-head attention written out: per-head softmax(q k^T / sqrt(d_h)) v, heads concatenated, out-proj."""
    W, b = attn.in_proj_weight, attn.in_proj_bias
    d = q_in.shape[-1]
    q, k, v = (x @ W[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i, x in enumerate((q_in, k_in, v_in)))
    h, dh = attn.heads, d // attn.heads
    outs = []
    for j in range(h):
        qj, kj, vj = (t[..., j * dh : (j + 1) * dh] for t in (q, k, v))
        logits = qj @ kj.transpose(-1, -2) / math.sqrt(dh)  # (B, N, M)
        if pad is not None:
            logits = logits.masked_fill(pad[:, None, :], float("-inf"))
        outs.append(logits.softmax(-1) @ vj)
    return attn.out_proj(torch.cat(outs, -1))


def _reference(head: EEVGHead, vision, text, mask):
    """The official head's forward re-derived step by step (no elimination, eval mode)."""
    B, L = text.shape[:2]
    visual = head.visu_proj(vision[:, PREFIX:])
    x = torch.cat([head.reg_token.expand(B, 1, -1), visual], 1)
    pos = head.visual_pos[None]
    mem = head.text_proj(text)
    mem_pos = head.text_pos[None, :L]
    pad = ~mask.bool()
    for layer in head.decoder.layers:  # post-norm: residual, then LayerNorm, after each of the three sub-layers
        x = layer.norm1(x + _attend(layer.self_attn, x + pos, x + pos, x))
        x = layer.norm2(x + _attend(layer.cross_attn, x + pos, mem + mem_pos, mem, pad))
        x = layer.norm3(x + layer.linear2(torch.relu(layer.linear1(x))))
    x = head.decoder.norm(x)
    box = head.box_head(x[:, 0]).sigmoid()
    p = SIZE // GRID
    blocks = head.mask_head.mlp(x[:, 1:])  # (B, g*g, p*p)
    image = torch.zeros(B, 1, SIZE, SIZE, dtype=x.dtype)
    for t in range(GRID * GRID):  # token t = patch (row, col) owns pixels [row*p, (row+1)*p) x [col*p, (col+1)*p)
        r, c = divmod(t, GRID)
        image[:, 0, r * p : (r + 1) * p, c * p : (c + 1) * p] = blocks[:, t].reshape(B, p, p)
    return box, head.mask_head.refine(image)[:, 0]


def test_forward_equals_the_plain_rederivation():
    torch.manual_seed(0)
    head = _head()
    vision, text, mask = _inputs()
    with torch.no_grad():
        out = head(vision, text, mask)
        box, masks = _reference(head, vision, text, mask)
    assert out["box"].shape == (3, 4) and out["mask_logits"].shape == (3, SIZE, SIZE)
    # float64 end to end: two orders of summation differ by ~1e-16 per op, far under 1e-12
    torch.testing.assert_close(out["box"], box, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["mask_logits"], masks, rtol=0, atol=1e-12)


def test_padded_text_tokens_change_nothing_and_positions_matter():
    torch.manual_seed(0)
    head = _head()
    vision, text, mask = _inputs()
    noisy = text.clone()
    noisy[~mask.bool()] = 100.0  # padding content is masked out of the cross-attention keys
    with torch.no_grad():
        a, b = head(vision, text, mask), head(vision, noisy, mask)
        torch.testing.assert_close(a["box"], b["box"], rtol=0, atol=1e-12)
        head.visual_pos.data[1:] = head.visual_pos.data[1:].flip(0)  # the query positions reach the output
        assert not torch.allclose(head(vision, text, mask)["box"], a["box"])


def test_neighbourhood_replaces_out_of_grid_neighbours_by_the_token():
    nb = neighbour_index(3)  # grid 0 1 2 / 3 4 5 / 6 7 8, neighbours in (dr, dc) row-major order
    assert nb[4].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert nb[0].tolist() == [0, 0, 0, 0, 0, 1, 0, 3, 4]
    assert nb[8].tolist() == [4, 5, 8, 7, 8, 8, 8, 8, 8]
    assert nb[5].tolist() == [1, 2, 5, 4, 5, 5, 7, 8, 5]


def _by_hand(logits: torch.Tensor, index: torch.Tensor, grid: int, threshold: float) -> list[list[int]]:
    """The elimination with keep = 0, written out: softmax, full grid (missing = the sample's min), 3x3 mean,
    min-max, the batch-minimum count of tokens under the threshold dropped (the lowest scores)."""
    w = logits.softmax(-1)
    full = w.min(-1, keepdim=True).values.repeat(1, grid * grid)
    full.scatter_(1, index, w)
    score = torch.zeros_like(full)
    for t in range(grid * grid):
        r, c = divmod(t, grid)
        total = 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                total = total + (full[:, rr * grid + cc] if 0 <= rr < grid and 0 <= cc < grid else full[:, t])
        score[:, t] = total / 9
    score = score.gather(1, index)
    norm = (score - score.min(-1, keepdim=True).values) / (score.max(-1, keepdim=True).values - score.min(-1, True)[0])
    size = int((norm < threshold).sum(-1).min())
    return [sorted(row.argsort(descending=True)[: row.numel() - size].tolist()) for row in score]


@pytest.mark.parametrize("threshold", [0.015, 0.3, 0.6])
def test_select_tokens_matches_the_hand_computation(threshold):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 16, generator=g, dtype=torch.float64) * 3
    index = torch.arange(16).expand(2, 16)
    kept = select_tokens(logits, index, neighbour_index(4), threshold=threshold, keep=0.0)
    assert kept.tolist() == _by_hand(logits, index, 4, threshold)
    assert kept.shape[1] < 16  # the min-max minimum is 0 < threshold: at least one token goes in every sample


def test_select_tokens_after_an_earlier_elimination_uses_grid_positions():
    g = torch.Generator().manual_seed(2)
    index = torch.tensor([[0, 2, 3, 5, 6, 9, 10, 12, 15], [1, 2, 4, 5, 7, 8, 11, 13, 14]])  # 9 of 16 left
    logits = torch.randn(2, 9, generator=g, dtype=torch.float64) * 3
    kept = select_tokens(logits, index, neighbour_index(4), threshold=0.4, keep=0.0)
    assert kept.tolist() == _by_hand(logits, index, 4, 0.4)
    # keep = 1: every droppable rank position is spared (rand >= 0 always), so nothing is dropped
    assert select_tokens(logits, index, neighbour_index(4), threshold=0.4, keep=1.0).tolist() == [list(range(9))] * 2
    flat = torch.zeros(2, 9, dtype=torch.float64)  # a flat score: nothing under the threshold, every token kept
    assert select_tokens(flat, index, neighbour_index(4), threshold=0.4, keep=0.0).tolist() == [list(range(9))] * 2


def test_elimination_keeps_reg_and_scatters_the_survivors_back_with_zeros():
    torch.manual_seed(0)
    head = _head(eliminate=True, eliminate_threshold=0.5, eliminate_keep=0.0)
    vision, text, mask = _inputs()
    seen = {}
    head.mask_head.refine.register_forward_hook(lambda m, args, out: seen.setdefault("map", args[0]))
    captured = {}

    def grab(module, args, out):
        captured["tokens"], captured["index"] = out

    head.decoder.register_forward_hook(grab)
    with torch.no_grad():
        out = head(vision, text, mask)
    tokens, index = captured["tokens"], captured["index"]
    k = index.shape[1]
    assert 0 < k < GRID * GRID and tokens.shape == (3, 1 + k, 16)  # [REG] + the survivors
    assert out["box"].shape == (3, 4) and out["mask_logits"].shape == (3, SIZE, SIZE)
    p = SIZE // GRID
    blocks = seen["map"][:, 0].reshape(3, GRID, p, GRID, p).permute(0, 1, 3, 2, 4).reshape(3, GRID * GRID, p * p)
    expected = torch.zeros_like(blocks)
    expected.scatter_(1, index[..., None].expand(-1, -1, p * p), head.mask_head.mlp(tokens[:, 1:]))
    torch.testing.assert_close(blocks, expected, rtol=0, atol=0)  # dropped patches: exact zeros
    with torch.no_grad():  # without elimination the same weights give another output
        head.decoder.eliminate = False
        assert not torch.allclose(head(vision, text, mask)["box"], out["box"])


def test_training_step_reaches_every_parameter_with_elimination():
    torch.manual_seed(0)
    head = EEVGHead(GEOMETRY, width=16, layers=2, ff=24, heads=4).train()
    vision, text, mask = (t.float() if t.is_floating_point() else t for t in _inputs())
    out = head(vision, text, mask)
    (out["box"].sum() + out["mask_logits"].sigmoid().mean()).backward()
    missing = [n for n, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_init_follows_the_official_code():
    torch.manual_seed(0)
    head = EEVGHead(HeadGeometry(768, 768, 1, 8, 112, 40), width=256, layers=3, ff=1024, heads=8)
    for name, p in head.decoder.named_parameters():
        if p.dim() > 1:  # Xavier-uniform: inside the bound, std = bound / sqrt(3) (a normal init would exceed it)
            fan_out, fan_in = p.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert p.abs().max() <= bound, name
            assert abs(p.std().item() / (bound / math.sqrt(3)) - 1) < 0.03, name  # >= 65k samples: std within 1 %
        elif name.endswith("bias") and "norm" not in name:
            assert torch.count_nonzero(p) == 0, name
        elif "norm" in name:
            assert torch.all(p == (1.0 if name.endswith("weight") else 0.0)), name
    for p in (head.reg_token, head.visual_pos, head.text_pos):  # nn.Embedding's N(0, 1)
        assert p.numel() < 100 or abs(p.std().item() - 1) < 0.05
    assert head.visual_pos.shape == (8 * 8 + 1, 256) and head.text_pos.shape == (40, 256)


def test_parameter_count_at_the_papers_size():
    """DINOv2-B/14 @ 448 (32 x 32 patches + CLS, width 768) + BERT-B (768), 40 text positions, width 768."""
    with torch.device("meta"):
        head = EEVGHead(HeadGeometry(768, 768, 1, 32, 448, 40))
    d, ff, n, p2 = 768, 1024, 32 * 32, 14 * 14
    linear = lambda i, o: i * o + o  # noqa: E731
    attention = 3 * d * d + 3 * d + linear(d, d)
    layer = 2 * attention + linear(d, ff) + linear(ff, d) + 3 * 2 * d
    expected = (
        2 * linear(d, d)  # visu_proj, text_proj
        + d + (n + 1) * d + 40 * d  # reg_token, visual_pos, text_pos
        + 3 * layer + 2 * d  # decoder + final LayerNorm
        + 2 * linear(d, d) + linear(d, 4)  # box MLP(768, 768, 4, 3)
        + linear(d, d) + linear(d, p2) + 25 + 1  # mask MLP(768, 768, 14^2, 2) + 5x5 conv
    )  # fmt: skip
    assert (
        sum(p.numel() for p in head.parameters()) == expected == 22_839_010
    )  # 22.8 M, the head dominates the adapters


def test_bad_shapes_are_refused():
    head = _head()
    vision, text, mask = _inputs()
    with pytest.raises(ValueError, match="expected num_prefix_tokens"):
        head(vision[:, 1:], text, mask)
    with pytest.raises(ValueError, match="learned text positions"):
        head(vision, torch.zeros(3, MAXLEN + 1, TEXT, dtype=torch.float64), torch.ones(3, MAXLEN + 1))
    with pytest.raises(ValueError, match="must be divisible"):
        _head(width=18)
    with pytest.raises(ValueError, match="task.head.layers must be >= 1 for the official head, got 0"):
        _head(layers=0)


def test_float32_forward_agrees_with_float64_within_rounding():
    torch.manual_seed(0)
    head = _head()
    vision, text, mask = _inputs()
    with torch.no_grad():
        ref = head(vision, text, mask)["box"]
        got = head.float()(vision.float(), text.float(), mask)["box"]
    # ~20 chained ops of width <= 24, float32 eps 6e-8 each: far under 1e-5 on sigmoid outputs in (0, 1)
    torch.testing.assert_close(got.double(), ref, rtol=0, atol=1e-5)
    assert F.mse_loss(got.double(), ref) < 1e-10
