"""The official AVE head (``temporal=official``): two linear layers on [CLS_v; CLS_a], per second, no activation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cola.models.heads.av import OFFICIAL_AVE_HIDDEN, TEMPORAL_CHOICES, AVEHead
from tests.conftest import ave_batch, make_ave

DV, DA, C = 24, 16, 29


def _official(**kw) -> AVEHead:
    return AVEHead(DV, DA, num_classes=C, temporal="official", **kw)


def test_official_head_structure_and_parameter_count():
    head = _official()
    assert "official" in TEMPORAL_CHOICES and OFFICIAL_AVE_HIDDEN == 512
    # the only submodule is the classifier: Linear(d_v + d_a, 512) then Linear(512, 29), both biased
    assert [name for name, _ in head.named_children()] == ["classifier"]
    layers = list(head.classifier)
    assert [type(m) for m in layers] == [nn.Linear, nn.Linear]
    assert (layers[0].in_features, layers[0].out_features) == (DV + DA, 512)
    assert (layers[1].in_features, layers[1].out_features) == (512, C)
    assert layers[0].bias is not None and layers[1].bias is not None
    assert head.fuse is None and head.norm is None and head.temporal is None and head.pos is None
    n_params = sum(p.numel() for p in head.parameters())
    assert n_params == (DV + DA) * 512 + 512 + 512 * C + C
    # no dropout, activation or norm anywhere (so train and eval modes agree)
    assert all(isinstance(m, (AVEHead, nn.Sequential, nn.Linear)) for m in head.modules())
    # the width, dropout and temporal options do not change it
    other = AVEHead(DV, DA, num_classes=C, temporal="official", d_model=33, dropout=0.5, temporal_layers=3)
    assert sum(p.numel() for p in other.parameters()) == n_params


def test_official_head_is_affine():
    """head(x1) + head(x2) - head(0) == head(x1 + x2): no nonlinearity between or after the two layers.

    Both sides are the same affine map summed in different orders, so they differ by rounding only: at most
    about (terms per dot product, 40 then 512) x eps x |partial sums| (O(1) here), i.e. ~1e-13 in float64
    (eps 2.2e-16; ~2e-15 measured), under the 1e-10 tolerance by orders of magnitude. In float32 (eps 1.2e-7)
    the same bound is ~1e-4 (~1e-6 measured), too loose to tell a mild nonlinearity apart, hence float64.
    """
    torch.manual_seed(0)
    head = _official().double().train()  # train mode: a dropout would show up here too
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(2, 3, 10, DV, generator=g, dtype=torch.float64)
    a1, a2 = torch.randn(2, 3, 10, DA, generator=g, dtype=torch.float64)
    zero_v, zero_a = torch.zeros_like(v1), torch.zeros_like(a1)
    with torch.no_grad():
        lhs = head(v1, a1) + head(v2, a2) - head(zero_v, zero_a)
        rhs = head(v1 + v2, a1 + a2)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-10)
    # scaling: head(s x) - head(0) == s (head(x) - head(0))
    with torch.no_grad():
        b = head(zero_v, zero_a)
        torch.testing.assert_close(head(2.5 * v1, 2.5 * a1) - b, 2.5 * (head(v1, a1) - b), rtol=0, atol=1e-10)
    # ... and the check does catch a nonlinear head (ours, GELU + LayerNorm): it is not vacuous
    ours = AVEHead(DV, DA, num_classes=C, temporal="none", d_model=32, dropout=0.0).double().eval()
    with torch.no_grad():
        gap = (ours(v1, a1) + ours(v2, a2) - ours(zero_v, zero_a) - ours(v1 + v2, a1 + a2)).abs().max()
    assert gap > 1e-3


def test_official_head_matches_the_two_linear_layers_on_vision_then_audio():
    torch.manual_seed(0)
    head = _official().double()
    v = torch.randn(2, 10, DV, dtype=torch.float64)
    a = torch.randn(2, 10, DA, dtype=torch.float64)
    l1, l2 = head.classifier
    expected = F.linear(F.linear(torch.cat([v, a], -1), l1.weight, l1.bias), l2.weight, l2.bias)
    with torch.no_grad():
        torch.testing.assert_close(head(v, a), expected, rtol=0, atol=1e-12)
        # vision first: zeroing the first d_v input columns removes the vision input's effect
        l1.weight[:, :DV] = 0
        torch.testing.assert_close(head(v, a), head(torch.randn_like(v), a), rtol=0, atol=0)
        assert not torch.allclose(head(v, a), head(v, torch.randn_like(a)))


def test_official_head_is_per_second():
    """Changing second t's vision or audio input changes second t's logits only (no temporal mixing)."""
    torch.manual_seed(0)
    head = _official().double().eval()
    v = torch.randn(2, 10, DV, dtype=torch.float64)
    a = torch.randn(2, 10, DA, dtype=torch.float64)
    with torch.no_grad():
        ref = head(v, a)
        assert ref.shape == (2, 10, C)
        for t in (0, 4, 9):
            for which in ("vision", "audio"):
                v2, a2 = v.clone(), a.clone()
                (v2 if which == "vision" else a2)[1, t] += 1.0
                diff = (head(v2, a2) - ref).abs().amax(-1)  # (B, T)
                assert diff[1, t] > 0, (t, which)
                diff[1, t] = 0
                assert (diff == 0).all(), (t, which)
        # a video of T seconds gives the same per-second logits as T one-second videos
        singles = torch.cat([head(v[:, t : t + 1], a[:, t : t + 1]) for t in range(10)], dim=1)
        torch.testing.assert_close(singles, ref, rtol=0, atol=1e-12)


def test_bad_temporal_names_the_choices():
    with pytest.raises(ValueError, match=r"temporal must be one of \['gru', 'transformer', 'none', 'official'\]"):
        AVEHead(8, 8, temporal="offical")


# ----------------------------------------------------------------------------------------------- task
def test_ave_task_with_the_official_head_trains_one_step():
    torch.manual_seed(0)
    task = make_ave("cola", temporal="official", loss="softmax_bce")
    assert [type(m) for m in task.head.classifier] == [nn.Linear, nn.Linear]
    assert task.head.classifier[0].in_features == sum(t.hidden_size for t in task.encoder.towers.values())
    batch = ave_batch(batch_size=2)
    out = task(batch)
    assert out["logits"].shape == (2, 10, 29)
    loss, terms = task.compute_loss(out, batch)
    onehot = F.one_hot(batch["labels"], 29).float()
    torch.testing.assert_close(loss, F.binary_cross_entropy(out["logits"].softmax(-1), onehot))  # official loss
    assert set(terms) == {"softmax_bce"}
    trainable = [p for p in task.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in task.head.named_parameters()}
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    opt.zero_grad()
    loss.backward()
    for n, p in task.head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in task.named_parameters() if "towers.audio." in n
    )
    opt.step()
    for n, p in task.head.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n
    with torch.no_grad():
        again, _ = task.compute_loss(task(batch), batch)
    assert torch.isfinite(again)


def test_ave_config_keeps_gru_and_accepts_official():
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["task=ave"], tiny=False)
    assert cfg.task.module.temporal == "gru"  # the demo default is unchanged
    cfg = compose_cfg(["task=ave", "task.module.temporal=official", "task.module.loss=softmax_bce"], tiny=False)
    assert cfg.task.module.temporal == "official" and cfg.task.module.loss == "softmax_bce"
