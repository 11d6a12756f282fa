"""Audio-visual heads and tasks: AVE per-second classification and AVS segmentation (tiny random towers). Training
on the synthetic sets, against the floors and the frozen towers: tests/tasks/test_av_learning.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cola.models.heads.av import (
    AVEHead,
    AVSMaskDecoder,
    decoder_scale_exponents,
    default_decoder_layers,
    pool_stream,
)
from cola.tasks.av_segmentation import masked_mask_losses
from tests.conftest import (
    AUDIO_FRAMES,
    AV_IMAGE,
    ave_batch,
    make_av_encoder,
    make_ave,
)

REPO = Path(__file__).resolve().parents[2]


def make_avs(method: str = "cola", *, seed: int = 0, **kwargs):
    from cola.tasks.av_segmentation import AVSSegmentationTask

    kwargs = {"d_decoder": 16, **kwargs}
    return AVSSegmentationTask(make_av_encoder(method, seed=seed), **kwargs)


def avs_batch(batch_size: int = 2, seed: int = 0, s4_train: bool = True) -> dict[str, torch.Tensor]:
    """AVS batch in the data contract; with ``s4_train`` clip 0 annotates frame 1 only (as S4 training)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch_size, 5, AV_IMAGE, AV_IMAGE)
    for b in range(batch_size):
        for k in range(5):
            x0, y0 = torch.randint(0, AV_IMAGE // 2, (2,), generator=g).tolist()
            masks[b, k, y0 : y0 + AV_IMAGE // 3, x0 : x0 + AV_IMAGE // 3] = 1
    valid = torch.ones(batch_size, 5, dtype=torch.bool)
    if s4_train:
        valid[0, 1:] = False
        masks[0, 1:] = 0  # the release has no mask there; the data module leaves zeros
    return {
        "pixel_values": torch.randn(batch_size, 5, 3, AV_IMAGE, AV_IMAGE, generator=g),
        "input_values": torch.randn(batch_size, 5, AUDIO_FRAMES, 128, generator=g),
        "masks": masks,
        "mask_valid": valid,
    }


# ----------------------------------------------------------------------------------------------- heads
def test_pool_stream_cls_and_mean():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # (N, 2 prefix + 2 content, C)
    torch.testing.assert_close(pool_stream(tokens, 2, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_stream(tokens, 2, "mean"), tokens[:, 2:].mean(1))
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_stream(tokens, 2, "max")


@pytest.mark.parametrize("temporal", ["gru", "transformer", "none"])
def test_ave_head_shapes_and_temporal_mixing(temporal):
    torch.manual_seed(0)
    head = AVEHead(24, 16, num_classes=29, d_model=32, temporal=temporal, dropout=0.0).eval()
    vision, audio = torch.randn(3, 10, 24), torch.randn(3, 10, 16)
    logits = head(vision, audio)
    assert logits.shape == (3, 10, 29) and torch.isfinite(logits).all()
    changed = audio.clone()
    changed[1, 4] += 1.0  # one second of one video
    diff = (head(vision, changed) - logits).abs().amax(-1)  # (B, T)
    assert diff[1, 4] > 0
    assert (diff[[0, 2]] == 0).all()  # other videos never see it
    others = diff[1, torch.arange(10) != 4]
    if temporal == "none":
        assert (others == 0).all()  # per-second classification, as the official head
    else:
        assert (others > 0).all()  # the temporal module spreads it over the video, both directions


def test_ave_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="temporal must be one of"):
        AVEHead(8, 8, temporal="lstm")
    with pytest.raises(ValueError, match="even"):
        AVEHead(8, 8, d_model=33, temporal="gru")
    with pytest.raises(ValueError, match="divisible"):
        AVEHead(8, 8, d_model=30, temporal="transformer", heads=4)
    head = AVEHead(8, 8, d_model=16, temporal="transformer", max_seconds=10)
    with pytest.raises(ValueError, match="max_seconds"):
        head(torch.randn(1, 11, 8), torch.randn(1, 11, 8))


def test_default_decoder_layers_and_scales():
    assert default_decoder_layers(12) == [2, 5, 8, 11]
    assert default_decoder_layers(24) == [5, 11, 17, 23]
    assert default_decoder_layers(2) == [0, 1]
    assert decoder_scale_exponents(4) == [2, 1, 0, -1]  # DPT: x4, x2, x1, x0.5
    assert decoder_scale_exponents(1) == [0]


def test_avs_decoder_shapes_prefix_and_audio_conditioning():
    torch.manual_seed(0)
    dec = AVSMaskDecoder(32, 16, num_levels=4, num_prefix_tokens=1, d_decoder=16).eval()
    layers = [torch.randn(3, 1 + 16, 32) for _ in range(4)]  # (N, prefix + 4x4, C)
    audio = torch.randn(3, 16)
    out = dec(layers, audio, AV_IMAGE)
    assert out.shape == (3, AV_IMAGE, AV_IMAGE) and torch.isfinite(out).all()
    # prefix tokens are dropped
    other_prefix = [t.clone() for t in layers]
    for t in other_prefix:
        t[:, 0] = torch.randn(3, 32)
    torch.testing.assert_close(dec(other_prefix, audio, AV_IMAGE), out)
    # FiLM starts as the identity (the audio does not matter yet) and conditions once trained
    torch.testing.assert_close(dec(layers, torch.randn(3, 16), AV_IMAGE), out)
    torch.nn.init.normal_(dec.film.weight, std=0.1)
    ref = dec(layers, audio, AV_IMAGE)
    changed = audio.clone()
    changed[1] += 1.0
    diff = (dec(layers, changed, AV_IMAGE) - ref).flatten(1).abs().amax(1)  # (N,)
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0  # each frame is conditioned on its own second
    with pytest.raises(ValueError, match="square"):
        dec([torch.randn(1, 1 + 15, 32)] * 4, audio[:1], AV_IMAGE)
    with pytest.raises(ValueError, match="4 vision blocks"):
        dec(layers[:3], audio, AV_IMAGE)


def test_masked_mask_losses_hand_cases():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, :2, :2] = 1
    perfect = (target * 2 - 1) * 50
    terms, n = masked_mask_losses(perfect, target, torch.tensor([[True, True]]))
    assert n == 2 and terms["bce"].item() < 1e-6 and terms["iou"].item() < 1e-6
    # p = 0.5 everywhere: BCE = log 2; frame 0: IoU (2 + 1) / (8 + 4 - 2 + 1); frame 1 (empty): 1 / (8 + 1)
    terms, _ = masked_mask_losses(torch.zeros(1, 2, 4, 4), target, torch.tensor([[True, True]]))
    assert terms["bce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert terms["iou"].item() == pytest.approx(((1 - 3 / 11) + (1 - 1 / 9)) / 2, rel=1e-6)
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    terms, n = masked_mask_losses(logits, target, torch.tensor([[False, False]]))
    assert n == 0 and terms["bce"].item() == 0 and terms["iou"].item() == 0
    terms["bce"].backward()  # still attached to the graph
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        masked_mask_losses(logits, target, torch.ones(1, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- AVE task
def test_ave_forward_shapes_and_losses():
    task = make_ave("cola")
    batch = ave_batch(batch_size=2)
    out = task(batch)
    assert out["logits"].shape == (2, 10, 29)
    loss, terms = task.compute_loss(out, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(terms) == {"ce"}
    torch.testing.assert_close(loss, F.cross_entropy(out["logits"].reshape(20, 29), batch["labels"].reshape(20)))
    official = make_ave("frozen", loss="softmax_bce")
    out = official(batch)
    loss, terms = official.compute_loss(out, batch)
    onehot = F.one_hot(batch["labels"], 29).float()
    expected = F.binary_cross_entropy(out["logits"].softmax(-1), onehot)  # mean over B * T * 29 entries
    torch.testing.assert_close(loss, expected)
    with pytest.raises(ValueError, match="loss must be one of"):
        make_ave("frozen", loss="focal")
    with pytest.raises(ValueError, match="pooling must be one of"):
        make_ave("frozen", pooling="max")


def test_ave_second_t_sees_frame_t_and_audio_t():
    """Flattening (B, T) into the encoder batch and back keeps every (video, second) pair in place."""
    task = make_ave("frozen", temporal="none").eval()
    batch = ave_batch(batch_size=2)
    with torch.no_grad():
        ref = task(batch)["logits"]
        for key in ("pixel_values", "input_values"):
            changed = {**batch, key: batch[key].clone()}
            changed[key][1, 3] += 1.0
            diff = (task(changed)["logits"] - ref).abs().amax(-1)  # (B, T)
            assert diff[1, 3] > 0, key
            diff[1, 3] = 0
            assert (diff == 0).all(), key


def test_ave_metric_counts_seconds():
    task = make_ave("frozen")
    metrics = task.make_metrics()
    labels = torch.tensor([[0, 1, 2, 28], [5, 5, 5, 5]])
    logits = F.one_hot(labels, 29).float()
    logits[0, 0] = F.one_hot(torch.tensor(3), 29).float()  # 1 of 8 seconds wrong
    task.update_metrics(metrics, {"logits": logits}, {"labels": labels})
    assert float(metrics["acc"].compute()) == pytest.approx(7 / 8)


def _overfit(task, batch, steps: int = 30, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = task.compute_loss(task(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    return losses


def test_ave_overfits_one_batch():
    torch.manual_seed(0)
    task = make_ave("cola")
    batch = ave_batch(batch_size=1)
    losses = _overfit(task, batch)
    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        acc = (task(batch)["logits"].argmax(-1) == batch["labels"]).float().mean()
    assert acc > 0.8


def _assert_grads_on_heads_and_adapters(task, loss):
    from cola.peft import is_adapter_param

    loss.backward()
    named = dict(task.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert all(is_adapter_param(n) for n in trainable if n.startswith("encoder."))
    assert all(named[n].grad is None for n in named if n not in trainable)  # towers stay untouched
    assert all(named[n].grad is not None for n in trainable), [n for n in trainable if named[n].grad is None]
    for prefix in ("head.", "encoder.towers.vision.", "encoder.towers.audio."):
        total = sum(named[n].grad.abs().sum() for n in trainable if n.startswith(prefix))
        assert total > 0, f"no gradient reaches {prefix}"


def test_ave_gradients_reach_heads_and_adapters_only():
    task = make_ave("cola")
    batch = ave_batch()
    loss, _ = task.compute_loss(task(batch), batch)
    _assert_grads_on_heads_and_adapters(task, loss)


# ----------------------------------------------------------------------------------------------- AVS task
def test_avs_forward_shapes_layers_and_loss():
    task = make_avs("cola")
    assert task.decoder_layers == [0, 1]  # 2-block tower: both blocks
    batch = avs_batch()
    out = task(batch)
    assert out["mask_logits"].shape == (2, 5, AV_IMAGE, AV_IMAGE)
    loss, terms = task.compute_loss(out, batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and set(terms) == {"bce", "iou"}
    torch.testing.assert_close(loss.detach(), terms["bce"] + terms["iou"])
    weighted = make_avs("frozen", w_bce=2.0, w_iou=0.0)
    loss, terms = weighted.compute_loss(weighted(batch), batch)
    torch.testing.assert_close(loss.detach(), 2.0 * terms["bce"])
    assert make_avs("frozen", decoder_layers=[-1]).decoder_layers == [1]


def test_avs_decoder_layers_are_validated():
    for bad, match in (([2], r"\[-2, 2\)"), ([0, -2], "repeats"), ([], "non-empty"), ([0.5], "integers")):
        with pytest.raises(ValueError, match=match):
            make_avs("frozen", decoder_layers=bad)
    with pytest.raises(ValueError, match="w_bce"):
        make_avs("frozen", w_bce=0.0, w_iou=0.0)


def test_avs_unannotated_frames_do_not_contribute_to_the_loss():
    task = make_avs("frozen")
    batch = avs_batch(s4_train=True)
    with torch.no_grad():
        out = task(batch)
    loss, _ = task.compute_loss(out, batch)
    invalid = ~batch["mask_valid"]  # (B, F): clip 0, frames 2..5
    assert invalid.sum() == 4
    noisy_logits = out["mask_logits"].clone()
    noisy_logits[invalid] = torch.randn(int(invalid.sum()), AV_IMAGE, AV_IMAGE) * 10
    noisy_masks = batch["masks"].clone()
    noisy_masks[invalid] = 1.0
    loss_changed, _ = task.compute_loss({"mask_logits": noisy_logits}, {**batch, "masks": noisy_masks})
    torch.testing.assert_close(loss_changed, loss)
    # ... while a valid frame does count
    flipped = batch["masks"].clone()
    flipped[0, 0] = 1 - flipped[0, 0]
    assert not torch.allclose(task.compute_loss(out, {**batch, "masks": flipped})[0], loss)


def test_avs_metrics_on_perfect_and_inverted_predictions():
    task = make_avs("frozen")
    batch = avs_batch(s4_train=False)
    perfect, inverted = task.make_metrics(), task.make_metrics()
    task.update_metrics(perfect, {"mask_logits": (batch["masks"] * 2 - 1) * 20}, batch)
    task.update_metrics(inverted, {"mask_logits": (1 - batch["masks"] * 2) * 20}, batch)
    assert float(perfect["miou"].compute()) == pytest.approx(1.0)
    assert float(perfect["fscore"].compute()) == pytest.approx(1.0, abs=1e-4)
    assert float(inverted["miou"].compute()) == pytest.approx(0.0)


def test_avs_overfits_one_batch():
    torch.manual_seed(0)
    task = make_avs("cola")
    batch = avs_batch(s4_train=False)
    losses = _overfit(task, batch, lr=1e-2)
    assert losses[-1] < 0.7 * losses[0], losses


def test_avs_gradients_reach_heads_and_adapters_only():
    task = make_avs("cola")
    # FiLM starts as the identity (zero weights), which blocks gradients into the audio stream at step 0;
    # a trained FiLM layer passes them on
    torch.nn.init.normal_(task.head.film.weight, std=0.02)
    batch = avs_batch()
    loss, _ = task.compute_loss(task(batch), batch)
    _assert_grads_on_heads_and_adapters(task, loss)


# ----------------------------------------------------------------------------------------------- both tasks
@pytest.mark.parametrize("family", ["ave", "avs"])
def test_av_tasks_hand_the_rows_per_video_to_the_encoder(family):
    """The shuffled control takes each row's condition from another video: the tasks tell the encoder how many
    consecutive rows (AVE: 10 seconds, AVS: 5 frames) belong to one video."""
    task = make_ave() if family == "ave" else make_avs()
    batch = ave_batch(seconds=3) if family == "ave" else avs_batch()
    seen = {}
    forward = task.encoder.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return forward(*args, **kwargs)

    task.encoder.forward = spy
    task(batch)
    assert seen["rows_per_sample"] == (3 if family == "ave" else 5)
