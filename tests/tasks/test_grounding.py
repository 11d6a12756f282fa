"""Grounding losses, heads and the GroundingTask LightningModule (tiny random towers, synthetic RefCOCO)."""

from __future__ import annotations

import math

import pytest
import torch

from cola.models.losses import box_losses, dice_loss, sigmoid_focal_loss
from tests.conftest import (
    TASK_IMAGE,
    fast_dev_trainer,
    fusion_head,
    hand_batch,
    make_task,
    refcoco_datamodule,
)


# ----------------------------------------------------------------------------------------------- losses
def test_focal_loss_matches_hand_computation_on_logits():
    logits = torch.tensor([[0.0, 2.0]])  # (B=1, P=2)
    target = torch.tensor([[1.0, 0.0]])
    p = 1 / (1 + math.exp(-2.0))
    pos = -0.25 * (1 - 0.5) ** 2 * math.log(0.5)  # t = 1: alpha (1 - p)^gamma (-log p), p = 0.5
    neg = -0.75 * p**2 * math.log(1 - p)  # t = 0: (1 - alpha) p^gamma (-log(1 - p))
    expected = (pos + neg) / 2
    got = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the official double-sigmoid variant gives a different value: make sure we are not computing that one
    assert sigmoid_focal_loss(logits.sigmoid(), target).item() != pytest.approx(expected, rel=1e-3)


def test_focal_loss_is_mean_over_pixels_then_batch():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    per_sample = [sigmoid_focal_loss(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    assert sigmoid_focal_loss(logits, target).item() == pytest.approx(sum(per_sample).item() / 2, rel=1e-6)


def test_dice_loss_hand_case():
    logits = torch.tensor([[0.0, 0.0], [100.0, -100.0]])  # sample 0: p = 0.5 everywhere; sample 1: perfect
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # sample 0: 1 - (2 * 0.5 + 1) / ((0.5 + 0.5) + 1 + 1) = 1/3; sample 1: 1 - (2 + 1) / (1 + 1 + 1) = 0
    assert dice_loss(logits, target).item() == pytest.approx(1 / 6, abs=1e-6)


def test_box_losses_identical_boxes_are_zero():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    terms = box_losses(boxes, boxes.clone())
    assert terms["l1"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["giou"].item() == pytest.approx(0.0, abs=1e-4)  # torchvision's eps 1e-7 in the IoU division


def test_box_losses_hand_case():
    pred = torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.2, 0.2, 0.2, 0.2]])  # xyxy (0,0,.5,1), (.1,.1,.3,.3)
    target = torch.tensor([[0.75, 0.5, 0.5, 1.0], [0.7, 0.7, 0.2, 0.2]])  # xyxy (.5,0,1,1), (.6,.6,.8,.8)
    terms = box_losses(pred, target)
    # touching halves: IoU 0, hull = union -> GIoU 0 -> loss 1; disjoint squares: GIoU = -(0.49 - 0.08) / 0.49
    assert terms["giou"].item() == pytest.approx((1.0 + 1 + (0.49 - 0.08) / 0.49) / 2, rel=1e-5)
    assert terms["l1"].item() == pytest.approx((0.5 + 1.0) / 2, rel=1e-6)  # sum of |coordinate errors|, batch mean


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        dice_loss(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        box_losses(torch.zeros(2, 5), torch.zeros(2, 5))


# ----------------------------------------------------------------------------------------------- head
@pytest.mark.parametrize("box_head", ["mlp", "spatial"])
def test_head_shapes_ranges_and_text_padding_is_ignored(box_head):
    torch.manual_seed(0)
    head = fusion_head(box_head=box_head).eval()
    vision = torch.randn(2, 1 + 16, 48)  # (B, prefix + h*w, C)
    text = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.long)
    out = head(vision, text, mask)
    assert out["box"].shape == (2, 4) and out["mask_logits"].shape == (2, 56, 56)
    assert ((out["box"] > 0) & (out["box"] < 1)).all()
    assert torch.isfinite(out["mask_logits"]).all()
    garbage = text.clone()
    garbage[0, 3:] = 1e3  # padded positions of sample 0 must not change anything
    again = head(vision, garbage, mask)
    torch.testing.assert_close(again["box"], out["box"])
    torch.testing.assert_close(again["mask_logits"], out["mask_logits"])
    # ... while a real token does change the output
    changed = text.clone()
    changed[0, 1] += 1.0
    assert not torch.allclose(head(vision, changed, mask)["box"], out["box"])


def test_spatial_box_centre_is_the_soft_argmax_of_the_reg_attention():
    head = fusion_head(box_head="spatial").eval()
    d = 32
    with torch.no_grad():
        head.box_key.weight.copy_(torch.eye(d))
        head.box_key.bias.zero_()
        head.box_query.weight.copy_(100 * torch.eye(d))
        head.box_query.bias.zero_()
    reg = torch.zeros(2, d)
    reg[:, 0] = 1.0
    visual = torch.zeros(2, 16, d)
    visual[0, 6, 0] = 1.0  # sample 0: [REG] attends to token 6 = row 1, column 2 of the 4 x 4 grid
    box = head._box(reg, visual)
    torch.testing.assert_close(box[0, :2], torch.tensor([2.5 / 4, 1.5 / 4]), rtol=0, atol=1e-4)
    torch.testing.assert_close(box[1, :2], torch.tensor([0.5, 0.5]))  # uniform attention: the grid's centre
    assert ((box[:, 2:] > 0) & (box[:, 2:] < 1)).all()
    with pytest.raises(ValueError, match="box_head must be one of"):
        fusion_head(box_head="anchor")


def test_head_drops_prefix_tokens_and_checks_token_count():
    torch.manual_seed(0)
    head = fusion_head(num_prefix_tokens=3).eval()
    vision, text, mask = torch.randn(1, 3 + 16, 48), torch.randn(1, 4, 32), torch.ones(1, 4, dtype=torch.bool)
    out = head(vision, text, mask)
    other_prefix = vision.clone()
    other_prefix[:, :3] = torch.randn(1, 3, 48)
    torch.testing.assert_close(head(other_prefix, text, mask)["box"], out["box"])
    with pytest.raises(ValueError, match="grid_size"):
        head(torch.randn(1, 1 + 16, 48), text, mask)


def test_head_rejects_bad_width():
    with pytest.raises(ValueError, match="divisible"):
        fusion_head(d_fusion=30, heads=4)
    with pytest.raises(ValueError, match=r"task.head.layers \(fusion_layers\) must be >= 0"):
        fusion_head(fusion_layers=-1)


def test_no_fusion_head_reads_the_visual_tokens_alone():
    """``fusion_layers=0``: no text projection is built, the text (any token, any mask) changes nothing, and each
    box and mask still depends on its own image; the MLP box head, which would read the image-blind [REG] alone,
    is refused."""
    with pytest.raises(ValueError, match=r"task.head.layers=0 \(fusion_layers\) needs task.head.fusion_box=spatial"):
        fusion_head(fusion_layers=0, box_head="mlp")
    torch.manual_seed(0)
    head = fusion_head(fusion_layers=0, box_head="spatial").eval()
    assert head.text_proj is None and not any("text" in n for n, _ in head.named_parameters())
    vision, text = torch.randn(2, 1 + 16, 48), torch.randn(2, 5, 32)
    out = head(vision, text, torch.ones(2, 5, dtype=torch.bool))
    other = head(vision, torch.randn(2, 3, 32), torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool))
    for key in ("box", "mask_logits"):
        torch.testing.assert_close(other[key], out[key], rtol=0, atol=0)
    image = vision.clone()
    image[1, 1:] = torch.randn(16, 48)
    moved = head(image, text, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(moved["box"][0], out["box"][0], rtol=0, atol=0)
    assert not torch.allclose(moved["box"][1], out["box"][1])
    assert not torch.allclose(moved["mask_logits"][1], out["mask_logits"][1])


# ----------------------------------------------------------------------------------------------- task


def test_task_forward_shapes_and_loss_terms():
    task = make_task("cola")
    batch = hand_batch(batch_size=3)
    out = task(batch)
    assert out["box"].shape == (3, 4) and out["mask_logits"].shape == (3, TASK_IMAGE, TASK_IMAGE)
    loss, terms = task.compute_loss(out, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(terms) == {"l1", "giou", "focal", "dice"}
    expected = 0.1 * (terms["l1"] + terms["giou"]) + terms["focal"] + terms["dice"]
    torch.testing.assert_close(loss.detach(), expected)
    assert task.head.grid_size == TASK_IMAGE // 14 and task.head.num_prefix_tokens == 1


def test_loss_weights_are_applied():
    task = make_task("frozen", loss_alpha=0.5, w_l1=2.0, w_giou=0.0, w_focal=3.0, w_dice=0.0)
    batch = hand_batch()
    loss, terms = task.compute_loss(task(batch), batch)
    torch.testing.assert_close(loss.detach(), 0.5 * 2.0 * terms["l1"] + 3.0 * terms["focal"])


def test_register_tokens_are_dropped_before_the_grid():
    task = make_task("frozen", vit_name="vit_small_patch14_reg4_dinov2")
    assert task.head.num_prefix_tokens == 5  # cls + 4 registers
    out = task(hand_batch())
    assert out["mask_logits"].shape == (2, TASK_IMAGE, TASK_IMAGE)


def test_wrong_image_size_is_rejected():
    task = make_task("frozen")
    batch = hand_batch()
    batch["pixel_values"] = torch.randn(2, 3, 42, 42)
    with pytest.raises(ValueError, match="image_size"):
        task(batch)


def test_gradients_reach_heads_and_adapters_only():
    from cola.peft import is_adapter_param

    task = make_task("cola")
    batch = hand_batch()
    loss, _ = task.compute_loss(task(batch), batch)
    loss.backward()
    named = dict(task.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert all(is_adapter_param(n) for n in trainable if n.startswith("encoder."))
    assert any(n.startswith("encoder.towers.vision.") for n in trainable)
    assert any(n.startswith("encoder.towers.text.") for n in trainable)
    assert all(named[n].grad is None for n in named if n not in trainable)  # towers stay untouched
    assert all(named[n].grad is not None for n in trainable), [n for n in trainable if named[n].grad is None]
    for prefix in ("head.", "encoder.towers.vision.", "encoder.towers.text."):
        total = sum(named[n].grad.abs().sum() for n in trainable if n.startswith(prefix))
        assert total > 0, f"no gradient reaches {prefix}"


def test_overfits_one_batch():
    task = make_task("cola")
    batch = hand_batch(batch_size=2)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=2e-3)
    losses, giou = [], []
    for _ in range(30):
        loss, terms = task.compute_loss(task(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        giou.append(terms["giou"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert giou[-1] < 0.5 * giou[0], giou  # the box head learns too, not only the (heavier) mask losses


# ----------------------------------------------------------------------------------------------- with the data
@pytest.fixture(scope="module")
def datamodule(synthetic_refcoco):
    dm = refcoco_datamodule(
        synthetic_refcoco, image_size=TASK_IMAGE, batch_size=2, eval_batch_size=3, limit_per_split=6
    )
    dm.setup("fit")
    return dm


def test_longest_padding_gives_the_outputs_of_full_padding(datamodule):
    """pad_to=longest cuts padded token positions only: masked attention and masked-mean conditions ignore them."""
    from cola.data.refcoco import collate_grounding, collate_grounding_longest

    task = make_task("cola").eval()
    for p in task.encoder.parameters():  # live adapter paths
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    samples = [datamodule.val_dataset[i] for i in range(3)]
    full, cut = collate_grounding(samples), collate_grounding_longest(samples)
    longest = int(full["attention_mask"].sum(1).max())
    assert full["input_ids"].shape[1] == 12 and cut["input_ids"].shape[1] == longest < 12
    assert torch.equal(cut["input_ids"], full["input_ids"][:, :longest])
    with torch.no_grad():
        a, b = task(full), task(cut)
    torch.testing.assert_close(b["box"], a["box"], rtol=0, atol=1e-5)
    torch.testing.assert_close(b["mask_logits"], a["mask_logits"], rtol=0, atol=1e-4)
    assert collate_grounding_longest([None]) is None


def test_sincos_positions():
    from cola.models.heads.grounding import sincos_2d

    pos = sincos_2d(4, 8)
    assert pos.shape == (16, 8)
    assert torch.cdist(pos, pos).add(torch.eye(16)).min() > 0.1  # every grid cell gets a distinct code
    torch.testing.assert_close(pos[1, :2], torch.tensor([math.sin(1.0), math.sin(0.01)]))  # cell (y 0, x 1)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 6)


def test_perfect_predictions_score_one_at_original_resolution(datamodule):
    task = make_task("frozen")
    metrics = task.make_metrics()
    for batch in datamodule.val_dataloader():
        # the ground truth in the input frame, as predictions: box as is, mask as confident logits
        out = {"box": batch["box"], "mask_logits": (batch["mask"] * 2 - 1) * 20}
        task.update_metrics(metrics, out, batch)
    values = {k: float(m.compute()) for k, m in metrics.items()}
    assert values["acc@0.5"] == pytest.approx(1.0)
    assert values["miou"] > 0.9 and values["oiou"] > 0.9, values
    # and wrong predictions score zero: a tiny box in the corner, the inverted mask
    wrong = task.make_metrics()
    for batch in datamodule.val_dataloader():
        tiny = torch.tensor([[0.005, 0.005, 0.01, 0.01]]).expand(len(batch["meta"]), 4)
        task.update_metrics(wrong, {"box": tiny, "mask_logits": (1 - batch["mask"] * 2) * 20}, batch)
    values = {k: float(m.compute()) for k, m in wrong.items()}
    assert values["acc@0.5"] == 0.0 and values["miou"] < 0.05 and values["oiou"] < 0.05, values


def grounding_short_run(method: str, datamodule, tmp_path, seed: int = 0):
    """6 epochs of the 6 training samples (18 steps), no validation, then the test splits: (test metrics of every
    split, mean training loss per epoch, the fixed-box floors)."""
    import lightning as L

    from tests.conftest import EpochLosses

    task = make_task(
        method, seed=seed, val_split="val", test_splits=datamodule.test_splits, lr_adapters=3e-3, lr_heads=3e-3
    )
    L.seed_everything(seed, workers=True)  # the training order
    losses = EpochLosses()
    trainer = fast_dev_trainer(
        tmp_path, fast_dev_run=False, max_epochs=6, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[losses]
    )
    trainer.fit(task, datamodule=datamodule)
    results = trainer.test(task, datamodule=datamodule, verbose=False)
    assert len(results) == len(datamodule.test_splits) and len(losses.epoch_means()) == 6
    metrics = {k: v for res in results for k, v in res.items()}
    return metrics, losses.epoch_means(), datamodule.floor_metrics()


@pytest.mark.parametrize("method", ["cola", "lora", "moka", "frozen"])
def test_short_run_with_refcoco_datamodule_learns(method, datamodule, tmp_path):
    """18 steps on 6 samples cannot beat the fixed-box floor reliably (acc@0.5 0 on most splits, like the floor);
    what they do reliably is lower the training loss (epoch means over the same 6 samples: the last 0.82-0.88 of
    the first over seeds 0-2 and the four methods)."""
    metrics, losses, floor = grounding_short_run(method, datamodule, tmp_path)
    for split in datamodule.test_splits:
        assert {f"{split}/{name}" for name in ("acc@0.5", "miou", "oiou")} <= set(metrics)
        assert f"{split}/acc@0.5_fixed_box" in floor
    assert losses[-1] < 0.92 * losses[0], losses


class _FakeTower(torch.nn.Module):
    """A vision tower without a timm patch embedding: the grid comes from the embedded token count."""

    num_prefix_tokens = 2

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def embed(self, inputs):
        side = inputs["pixel_values"].shape[-1] // self.patch
        n = self.num_prefix_tokens + side * (side + (self.patch == 7))  # patch 7: a non-square grid
        return torch.zeros(1, n, 8), torch.ones(1, n, dtype=torch.bool)


def test_grid_size_from_timm_patch_size_or_token_count():
    from cola.tasks.grounding import vision_grid_size

    timm_encoder = make_task("frozen").encoder
    assert vision_grid_size(timm_encoder, 112) == 8
    encoder = torch.nn.Module()
    encoder.towers = {"vision": _FakeTower(patch=16)}
    assert vision_grid_size(encoder, 64) == 4
    encoder.towers = {"vision": _FakeTower(patch=7)}
    with pytest.raises(ValueError, match="square"):
        vision_grid_size(encoder, 56)


def test_towers_train_in_train_mode_however_they_were_loaded(datamodule, tmp_path):
    """from_pretrained towers come in eval mode; training runs every module in train mode (dropout on)."""
    import lightning as L

    task = make_task("lora", val_split="val", test_splits=datamodule.test_splits)
    task.encoder.towers["text"].eval()  # as transformers' from_pretrained leaves a loaded BERT
    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(all(m.training for m in pl_module.modules()))

    trainer = fast_dev_trainer(tmp_path, callbacks=[Probe()])
    trainer.fit(task, datamodule=datamodule)
    assert seen == [True]
