"""Grounding mask heads: the official per-token head (``mask_head=official``) and the conv decoder (``conv``)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cola.models.heads.grounding import MASK_HEADS, GroundingHead, HeadGeometry, MaskDecoder, TokenMaskHead
from cola.models.losses import dice_loss, sigmoid_focal_loss
from tests.conftest import (
    HEAD_GEOMETRY,
    TASK_IMAGE,
    compose_cfg,
    fast_dev_trainer,
    fusion_head,
    hand_batch,
    make_task,
    refcoco_datamodule,
)

_head = partial(fusion_head, fusion_layers=1, mask_head="official")


def _inputs(batch: int, grid: int, prefix: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    vision = torch.randn(batch, prefix + grid * grid, 48, generator=g)
    text = torch.randn(batch, 5, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * batch, dtype=torch.long)
    return vision, text, mask


# ----------------------------------------------------------------------------------------------- the head
@pytest.mark.parametrize(
    ("image_size", "grid_size"),
    [(56, 4), (64, 4), (32, 8), (448, 32), (30, 30)],  # patches 14, 16, 4, 14 (dinov2_bert), 1
)
def test_official_mask_head_output_shape(image_size, grid_size):
    torch.manual_seed(0)
    head = _head(image_size=image_size, grid_size=grid_size).eval()
    assert isinstance(head.mask_head, TokenMaskHead) and head.mask_head.patch == image_size // grid_size
    vision, text, mask = _inputs(2, grid_size)
    with torch.no_grad():
        out = head(vision, text, mask)
    assert out["mask_logits"].shape == (2, image_size, image_size)  # same contract as the conv head
    assert out["box"].shape == (2, 4)
    assert torch.isfinite(out["mask_logits"]).all()
    conv = _head(image_size=image_size, grid_size=grid_size, mask_head="conv").eval()
    with torch.no_grad():
        assert conv(vision, text, mask)["mask_logits"].shape == out["mask_logits"].shape


def test_official_mask_head_structure_follows_the_official_code():
    """MLP(d, d, p*p, 2 layers, ReLU) per token + Conv2d(1, 1, 5, padding=2); nothing else."""
    d, grid, size = 32, 4, 56
    m = TokenMaskHead(d, grid, size)
    p = size // grid
    assert [type(x) for x in m.mlp] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (m.mlp[0].in_features, m.mlp[0].out_features) == (d, d)
    assert (m.mlp[2].in_features, m.mlp[2].out_features) == (d, p * p)
    conv = m.refine
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.padding) == (1, 1, (5, 5), (2, 2))
    assert conv.bias is not None
    n_params = sum(x.numel() for x in m.parameters())
    assert n_params == (d * d + d) + (d * p * p + p * p) + (25 + 1)


def test_official_tiling_is_a_pixel_shuffle_and_each_token_owns_its_block():
    torch.manual_seed(0)
    d, grid, size = 16, 4, 32
    m = TokenMaskHead(d, grid, size).double().eval()
    p = size // grid
    with torch.no_grad():
        m.refine.weight.zero_()
        m.refine.weight[0, 0, 2, 2] = 1.0  # identity conv: see the tiled blocks themselves
        m.refine.bias.zero_()
    x = torch.randn(2, d, grid, grid, dtype=torch.float64)
    with torch.no_grad():
        out = m(x)
        blocks = m.mlp(x.flatten(2).transpose(1, 2))  # (B, h*w, p*p)
    # pixel_shuffle with the p*p block entries as channels: token (r, c), entry (i, j) -> pixel (r*p+i, c*p+j)
    shuffled = F.pixel_shuffle(blocks.transpose(1, 2).reshape(2, p * p, grid, grid), p)[:, 0]
    torch.testing.assert_close(out, shuffled, rtol=0, atol=0)
    torch.testing.assert_close(out[1, 2 * p : 3 * p, 1 * p : 2 * p], blocks[1, 2 * grid + 1].view(p, p))
    # with a random 5x5 conv, one token reaches only its own block dilated by 2 pixels (the conv's radius)
    torch.manual_seed(1)
    m2 = TokenMaskHead(d, grid, size).double().eval()
    changed = x.clone()
    changed[0, :, 1, 2] += 1.0  # token row 1, column 2 of sample 0
    with torch.no_grad():
        diff = (m2(changed) - m2(x)).abs()
    assert diff[1].max() == 0  # the other sample
    reach = torch.zeros(size, size, dtype=torch.bool)
    reach[p - 2 : 2 * p + 2, 2 * p - 2 : 3 * p + 2] = True
    assert diff[0][~reach].max() == 0
    assert diff[0][p : 2 * p, 2 * p : 3 * p].max() > 0


def test_gradients_of_the_mask_loss_reach_every_official_mask_head_parameter():
    torch.manual_seed(0)
    head = _head()
    vision, text, mask = _inputs(2, 4)
    target = torch.zeros(2, 56, 56)
    target[:, 10:30, 20:40] = 1
    logits = head(vision, text, mask)["mask_logits"]
    loss = sigmoid_focal_loss(logits, target) + dice_loss(logits, target)  # the mask losses only
    loss.backward()
    params = dict(head.mask_head.named_parameters())
    assert set(params) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "refine.weight", "refine.bias"}
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert head.vision_proj.weight.grad.abs().sum() > 0  # and on through the fusion


@pytest.mark.parametrize(("image_size", "grid_size"), [(56, 5), (60, 7), (100, 3)])
def test_non_divisible_image_and_grid_are_rejected(image_size, grid_size):
    with pytest.raises(ValueError, match=rf"image_size \({image_size}\) must be a multiple of the patch grid side"):
        _head(image_size=image_size, grid_size=grid_size)
    _head(image_size=image_size, grid_size=grid_size, mask_head="conv")  # the conv head resizes to any size


def test_bad_mask_head_names_key_value_and_choices():
    with pytest.raises(ValueError, match=r"mask_head must be one of \['official', 'conv'\], got 'unet'"):
        _head(mask_head="unet")
    with pytest.raises(ValueError, match="mask_head.*'unet'"):
        make_task("frozen", head={"fusion_mask": "unet"})
    assert MASK_HEADS == ("official", "conv")


def test_conv_mask_head_is_the_python_default():
    head = _head(mask_head="conv")
    assert isinstance(head.mask_head, MaskDecoder) and head.mask_head_kind == "conv"
    assert isinstance(GroundingHead(HeadGeometry(**HEAD_GEOMETRY), d_fusion=32, heads=4).mask_head, MaskDecoder)


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("model", "expected"), [("tiny", "fusion"), ("dinov2_bert", "official"), ("dinov2_ast", "official")]
)
def test_config_plumbs_the_head_from_the_model(model, expected):
    cfg = compose_cfg(["task=refcoco", f"model={model}"], tiny=False)
    assert cfg.task.preset.head == expected  # task.presets row of model.name (official for dinov2_ast)
    assert cfg.task.head.name == expected  # ${task.preset.head}
    assert cfg.task.module.head.name == expected  # what the task builds


def test_tiny_default_still_builds_the_conv_head():
    from cola.harness import build_encoder, build_module

    cfg = compose_cfg([])  # the demo: task=refcoco, model=tiny (tiny test towers)
    assert cfg.task.name == "refcoco" and cfg.model.name == "tiny"
    dm = SimpleNamespace(val_split="val", test_splits=["val"])
    task = build_module(cfg, build_encoder(cfg), dm)
    assert task.head.mask_head_kind == "conv" and isinstance(task.head.mask_head, MaskDecoder)


# ----------------------------------------------------------------------------------------------- task
def test_grounding_task_with_the_official_mask_head_trains_one_step():
    task = make_task("cola", head={"fusion_mask": "official"})
    assert isinstance(task.head.mask_head, TokenMaskHead) and task.head.mask_head.patch == 14  # 56 px / 4 patches
    batch = hand_batch(batch_size=2)
    out = task(batch)
    assert out["mask_logits"].shape == (2, TASK_IMAGE, TASK_IMAGE)
    trainable = [p for p in task.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    before = {n: p.detach().clone() for n, p in task.head.mask_head.named_parameters()}
    loss, terms = task.compute_loss(out, batch)
    assert torch.isfinite(loss) and set(terms) == {"l1", "giou", "focal", "dice"}
    opt.zero_grad()
    loss.backward()
    opt.step()
    for n, p in task.head.mask_head.named_parameters():
        assert not torch.equal(p.detach(), before[n]), n  # every official mask-head parameter moved
    with torch.no_grad():
        again, _ = task.compute_loss(task(batch), batch)
    assert torch.isfinite(again)


def test_grounding_task_with_the_official_mask_head_runs_a_lightning_training_step(synthetic_refcoco, tmp_path):
    dm = refcoco_datamodule(
        synthetic_refcoco, image_size=TASK_IMAGE, batch_size=2, eval_batch_size=2, limit_per_split=2
    )
    task = make_task("cola", head={"fusion_mask": "official"}, val_split="val", test_splits=["val"])
    trainer = fast_dev_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
