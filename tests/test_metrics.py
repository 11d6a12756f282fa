"""cola.metrics on hand-computed cases (SPEC §8)."""

from __future__ import annotations

import pytest
import torch

from cola.metrics import AVSFScore, AVSMIoU, BoxAccuracy, MaskMIoU, MaskOIoU, box_iou_xyxy, generalized_box_iou_xyxy


def test_box_accuracy_hand_cases():
    m = BoxAccuracy()
    target = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5.0]])
    pred = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9], [5, 5, 5, 5.0]])
    # IoUs: 1, exactly 0.5 (counts), 0.49 (miss), zero-area target (miss)
    m.update(pred, target)
    assert m.compute().item() == pytest.approx(0.5)
    assert box_iou_xyxy(pred[3], target[3]).item() == 0.0


def test_box_accuracy_clips_to_image_when_sizes_given():
    m = BoxAccuracy()
    m.update(torch.tensor([[-10.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 10]]), image_sizes=torch.tensor([[10, 10]]))
    assert m.compute().item() == 1.0


def test_giou_identity_and_disjoint():
    a = torch.tensor([[0.0, 0, 2, 2]])
    assert generalized_box_iou_xyxy(a, a).item() == pytest.approx(1.0)
    b = torch.tensor([[2.0, 0, 4, 2]])  # touching: IoU 0, hull 8, union 8 -> giou 0
    assert generalized_box_iou_xyxy(a, b).item() == pytest.approx(0.0)
    c = torch.tensor([[4.0, 0, 6, 2]])  # hull 12, union 8 -> -1/3
    assert generalized_box_iou_xyxy(a, c).item() == pytest.approx(-1 / 3)


def test_miou_differs_from_oiou_by_hand():
    # sample 1: 4-pixel target fully predicted (IoU 1); sample 2: 1 of 4 target pixels predicted, IoU 1/4
    t1 = torch.zeros(4, 4)
    t1[:2, :2] = 1
    p1 = t1.clone()
    t2 = torch.zeros(2, 8)
    t2[0, :4] = 1
    p2 = torch.zeros(2, 8)
    p2[0, 0] = 0.9
    miou, oiou = MaskMIoU(), MaskOIoU()
    miou.update([p1, p2], [t1, t2])  # variable sizes
    oiou.update([p1, p2], [t1, t2])
    assert miou.compute().item() == pytest.approx((1 + 0.25) / 2)
    assert oiou.compute().item() == pytest.approx((4 + 1) / (4 + 4))


def test_mask_threshold_is_inclusive_and_empty_pairs_score_one():
    miou = MaskMIoU()
    miou.update(torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2))
    miou.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    assert miou.compute().item() == 1.0


def test_metrics_independent_of_batching():
    torch.random.manual_seed(0)
    probs, target = torch.rand(6, 5, 5), torch.rand(6, 5, 5) > 0.5
    one, two = MaskOIoU(), MaskOIoU()
    one.update(probs, target)
    two.update(probs[:2], target[:2])
    two.update(probs[2:], target[2:])
    assert one.compute() == two.compute()
    logits, masks = torch.randn(4, 3, 6, 6), torch.rand(4, 3, 6, 6) > 0.6
    for cls in (AVSMIoU, AVSFScore):
        a, b = cls(), cls()
        a.update(logits, masks)
        b.update(logits[:1], masks[:1])
        b.update(logits[1:], masks[1:])
        assert a.compute().item() == pytest.approx(b.compute().item())


def test_avs_miou_empty_frame_scores_true_negatives():
    logits = torch.full((1, 2, 2, 2), -5.0)
    logits[0, 1, 0, 0] = 5.0  # one false positive on the empty frame
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1  # frame 0: target 1 pixel, prediction empty -> IoU 0
    m = AVSMIoU()
    m.update(logits, target)
    # frame 0: 0; frame 1 (empty gt): 3 TN of 4 pixels = 0.75; video mean 0.375
    assert m.compute().item() == pytest.approx(0.375)
    m2 = AVSMIoU()
    m2.update(logits, target, frame_mask=torch.tensor([[False, True]]))
    assert m2.compute().item() == pytest.approx(0.75)


def _fscore_by_hand(probs: list[float], gt: list[int], beta2=0.3, n=255) -> list[float]:
    curve = []
    for i in range(n):
        t = i * (1 - 1e-10) / (n - 1)
        pred = [p >= t for p in probs]
        tp = sum(1 for p, g in zip(pred, gt) if p and g)
        prec = tp / (sum(pred) + 1e-20)
        rec = tp / (sum(gt) + 1e-20)
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec) if (beta2 * prec + rec) > 0 else 0.0
        curve.append(f)
    return curve


def test_avs_fscore_against_plain_python():
    probs = torch.tensor([0.9, 0.6, 0.3, 0.1])
    gt = torch.tensor([1, 0, 1, 0])
    frame2 = torch.tensor([0.2, 0.8, 0.7, 0.4])
    gt2 = torch.tensor([0, 1, 0, 0])
    logits = torch.logit(torch.stack([probs, frame2])).reshape(1, 2, 2, 2)
    target = torch.stack([gt, gt2]).reshape(1, 2, 2, 2)
    c1 = _fscore_by_hand(torch.sigmoid(torch.logit(probs)).tolist(), gt.tolist())
    c2 = _fscore_by_hand(torch.sigmoid(torch.logit(frame2)).tolist(), gt2.tolist())
    expected = max((a + b) / 2 for a, b in zip(c1, c2))
    m = AVSFScore()
    m.update(logits, target)
    assert m.compute().item() == pytest.approx(expected, abs=1e-5)


def test_avs_fscore_skips_or_zeroes_empty_videos():
    logits = torch.randn(2, 2, 3, 3)
    target = torch.zeros(2, 2, 3, 3)
    target[0, 0, 1, 1] = 1
    logits[0, 0] = -10
    logits[0, 0, 1, 1] = 10  # perfect on the only non-empty frame
    skip, zero = AVSFScore(), AVSFScore(empty_video="zero")
    skip.update(logits, target)
    zero.update(logits, target)
    assert skip.compute().item() == pytest.approx(1.0)
    assert zero.compute().item() == pytest.approx(0.5)


@pytest.mark.parametrize("cls", [AVSMIoU, AVSFScore])
def test_avs_shape_errors(cls):
    with pytest.raises(ValueError, match=r"logits shape \(1, 2, 3, 3\) != target shape \(1, 2, 3, 4\)"):
        cls().update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match="expects"):
        cls().update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))


def test_mask_shape_errors():
    with pytest.raises(ValueError, match="prediction shape"):
        MaskMIoU().update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match="prediction shape"):
        BoxAccuracy().update(torch.zeros(2, 4), torch.zeros(3, 4))
