"""cola.metrics against hand-computed cases and plain-Python references (docs/metrics.md)."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy
from torchvision.ops import box_iou, generalized_box_iou

from cola.metrics import (
    AVSFScore,
    AVSMIoU,
    BoxAccuracy,
    MaskMIoU,
    MaskOIoU,
    SegmentAccuracy,
    box_cxcywh_to_xyxy,
    box_iou_xyxy,
    box_xyxy_to_cxcywh,
    generalized_box_iou_xyxy,
)
from cola.metrics.avs import _f_curves


def _logits(probs: list[float] | torch.Tensor) -> torch.Tensor:
    return torch.logit(torch.as_tensor(probs, dtype=torch.float64)).float()


# ----------------------------------------------------------------------------------------------- boxes


def test_box_helpers_match_torchvision_and_round_trip():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 10
    a = torch.cat([xy, xy + torch.rand(50, 2, generator=gen) * 5 + 0.1], -1)  # (50, 4)
    b = a.roll(1, 0) + torch.rand(50, 4, generator=gen)
    b = torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2] + 0.1)], -1)
    assert box_iou_xyxy(a, b).shape == (50,)
    torch.testing.assert_close(box_iou_xyxy(a, b), box_iou(a, b).diagonal())
    torch.testing.assert_close(generalized_box_iou_xyxy(a, b), generalized_box_iou(a, b).diagonal())
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(a)), a)
    assert box_xyxy_to_cxcywh(torch.tensor([2.0, 4, 6, 10])).tolist() == [4, 7, 4, 6]


def test_box_iou_degenerate_boxes_are_zero_not_nan():
    point = torch.tensor([[5.0, 5, 5, 5]])
    line = torch.tensor([[0.0, 5, 10, 5]])
    big = torch.tensor([[0.0, 0, 10, 10]])
    inverted = torch.tensor([[10.0, 10, 0, 0]])
    for x, y in [(point, point), (line, line), (point, big), (big, point), (inverted, big), (inverted, inverted)]:
        assert box_iou_xyxy(x, y).item() == 0.0
        assert not generalized_box_iou_xyxy(x, y).isnan().any()


def test_giou_hand_cases():
    a = torch.tensor([[0.0, 0, 2, 2]])
    assert generalized_box_iou_xyxy(a, a).item() == pytest.approx(1.0)
    # touching: IoU 0, hull 8 = union 8 -> 0
    assert generalized_box_iou_xyxy(a, torch.tensor([[2.0, 0, 4, 2]])).item() == pytest.approx(0.0)
    # gap of 2: hull 12, union 8 -> -4/12
    assert generalized_box_iou_xyxy(a, torch.tensor([[4.0, 0, 6, 2]])).item() == pytest.approx(-1 / 3)


def test_box_helpers_reject_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(2, 4\) and \(3, 4\)"):
        box_iou_xyxy(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        generalized_box_iou_xyxy(torch.zeros(2, 3), torch.zeros(2, 3))


def test_box_accuracy_hand_cases():
    target = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 9.0]])
    pred = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9], [5, 5, 5, 5], [0, 0, 10, 10.0]])
    # IoUs: 1 (hit), 50/100 exactly at the threshold (hit), 49/100 (miss), identical zero-area point target
    # (miss), zero-area line target inside the prediction (miss) -> 2 of 5
    m = BoxAccuracy()
    m.update(pred, target)
    out = m.compute()
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(2 / 5)
    strict = BoxAccuracy(iou_threshold=0.51)
    strict.update(pred, target)
    assert strict.compute().item() == pytest.approx(1 / 5)


def test_box_accuracy_clips_with_image_sizes_as_height_width():
    # image 5 high, 20 wide; the prediction overshoots both ways: clipped it equals the target (IoU 1); unclipped
    # IoU = 100 / 400 (miss); clipped with (h, w) swapped it becomes [0, 0, 5, 10], IoU 25 / 125 (miss)
    pred, target = torch.tensor([[-5.0, 0, 40, 10]]), torch.tensor([[0.0, 0, 20, 5]])
    clipped, unclipped = BoxAccuracy(), BoxAccuracy()
    clipped.update(pred, target, image_sizes=torch.tensor([[5, 20]]))
    unclipped.update(pred, target)
    assert clipped.compute().item() == 1.0
    assert unclipped.compute().item() == 0.0
    with pytest.raises(ValueError, match="image_sizes"):
        BoxAccuracy().update(pred, target, image_sizes=torch.tensor([5, 20]))


def test_box_accuracy_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"pred_boxes \(2, 4\) and target_boxes \(3, 4\)"):
        BoxAccuracy().update(torch.zeros(2, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        BoxAccuracy().update(torch.zeros(4), torch.zeros(4))


# ----------------------------------------------------------------------------------------------- masks


def _two_mask_samples() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    # sample 1 (4 x 4): 4-pixel target, predicted exactly -> I 4, U 4, IoU 1
    t1 = torch.zeros(4, 4, dtype=torch.bool)
    t1[:2, :2] = True
    p1 = t1.float() * 0.8
    # sample 2 (2 x 8): 4-pixel target, 1 pixel predicted inside, 2 outside -> I 1, U 6, IoU 1/6
    t2 = torch.zeros(2, 8, dtype=torch.bool)
    t2[0, :4] = True
    p2 = torch.zeros(2, 8)
    p2[0, 0] = 0.9
    p2[1, 6:] = 0.7
    return [p1, p2], [t1, t2]


def test_miou_differs_from_oiou_by_hand_on_variable_size_masks():
    probs, targets = _two_mask_samples()
    miou, oiou = MaskMIoU(), MaskOIoU()
    miou.update(probs, targets)
    oiou.update(probs, targets)
    assert miou.compute().item() == pytest.approx((1 + 1 / 6) / 2)
    assert oiou.compute().item() == pytest.approx((4 + 1) / (4 + 6))


def test_mask_tensor_input_equals_list_input():
    gen = torch.Generator().manual_seed(1)
    probs, target = torch.rand(5, 6, 7, generator=gen), torch.rand(5, 6, 7, generator=gen) > 0.6
    for cls in (MaskMIoU, MaskOIoU):
        as_tensor, as_list = cls(), cls()
        as_tensor.update(probs, target.float())
        as_list.update(list(probs), list(target))
        assert as_tensor.compute().item() == pytest.approx(as_list.compute().item())


def test_mask_threshold_is_inclusive_and_empty_pairs_score_one():
    miou = MaskMIoU()
    miou.update(torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2))  # 0.5 >= 0.5: IoU 1
    miou.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))  # empty pair: 1
    miou.update(torch.zeros(1, 2, 2), torch.ones(1, 2, 2))  # empty prediction, full target: 0
    assert miou.compute().item() == pytest.approx(2 / 3)
    as_list = MaskMIoU()  # the same three samples through the list path (variable-size inputs)
    as_list.update(
        [torch.full((2, 2), 0.5), torch.zeros(1, 3), torch.zeros(3, 1)],
        [torch.ones(2, 2), torch.zeros(1, 3), torch.ones(3, 1)],
    )
    assert as_list.compute().item() == pytest.approx(2 / 3)
    high = MaskMIoU(threshold=0.6)
    high.update(torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2))
    assert high.compute().item() == 0.0


def test_oiou_conventions_for_all_empty_and_no_samples():
    all_empty = MaskOIoU()
    all_empty.update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    assert all_empty.compute().item() == 1.0
    with pytest.warns(UserWarning):  # torchmetrics warns when compute() runs before update()
        assert MaskOIoU().compute().item() == 0.0


def test_mask_metrics_reject_logits_and_soft_targets():
    with pytest.raises(ValueError, match="probabilities in"):
        MaskMIoU().update(torch.tensor([[[3.0, -2.0]]]), torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match="0/1 target"):
        MaskOIoU().update(torch.full((1, 1, 2), 0.7), torch.full((1, 1, 2), 0.5))
    ok = MaskMIoU()  # bilinear resizing may overshoot 1 by a rounding error: accepted
    ok.update(torch.full((1, 1, 2), 1.0 + 1e-6), torch.ones(1, 1, 2))
    assert ok.compute().item() == 1.0


def test_mask_shape_errors_name_both_shapes():
    with pytest.raises(ValueError, match=r"probs \(1, 2, 2\) and target \(1, 2, 3\)"):
        MaskMIoU().update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"sample 1: probs shape \(3, 3\) != target shape \(3, 4\)"):
        MaskOIoU().update([torch.zeros(2, 2), torch.zeros(3, 3)], [torch.zeros(2, 2), torch.zeros(3, 4)])
    with pytest.raises(ValueError, match="2 predicted masks for 1 target"):
        MaskOIoU().update([torch.zeros(2, 2), torch.zeros(3, 3)], [torch.zeros(2, 2)])
    with pytest.raises(ValueError, match=r"\(H, W\) tensor, got \(1, 2, 2\)"):
        MaskMIoU().update([torch.zeros(1, 2, 2)], [torch.zeros(1, 2, 2)])


# ----------------------------------------------------------------------------------------------- AVS mIoU


def test_avs_miou_empty_frame_scores_true_negatives_by_hand():
    # one video, two 2 x 3 frames (6 pixels, so a wrong pixel count or H/W mix-up changes the result)
    logits = torch.full((1, 2, 2, 3), -5.0)
    target = torch.zeros(1, 2, 2, 3)
    target[0, 0, 0, :2] = 1  # frame 0: 2-pixel target
    logits[0, 0, 0, 1:] = 5.0  # predicted pixels (0, 1), (0, 2): I 1, U 3 -> 1/3
    logits[0, 1, 1, 0] = 5.0  # frame 1 (empty target): one false positive -> 5 TN of 6 pixels
    m = AVSMIoU()
    m.update(logits, target)
    assert m.compute().item() == pytest.approx((1 / 3 + 5 / 6) / 2)
    only_second = AVSMIoU()
    only_second.update(logits, target, frame_mask=torch.tensor([[False, True]]))
    assert only_second.compute().item() == pytest.approx(5 / 6)


def test_avs_miou_averages_frames_within_a_video_then_videos():
    # video 0: frames score 1 and 0 -> 0.5; video 1: only frame 0 annotated, scores 1 -> 1. Mean of videos 0.75
    # (a mean over all 3 frames would give 2/3).
    target = torch.ones(2, 2, 2, 2)
    logits = torch.full((2, 2, 2, 2), 5.0)
    logits[0, 1] = -5.0
    logits[1, 1] = -5.0  # not annotated: must not count
    m = AVSMIoU()
    m.update(logits, target, frame_mask=torch.tensor([[True, True], [True, False]]))
    assert m.compute().item() == pytest.approx(0.75)
    none_valid = AVSMIoU()  # a video without any annotated frame is skipped
    none_valid.update(logits, target, frame_mask=torch.tensor([[True, True], [False, False]]))
    assert none_valid.compute().item() == pytest.approx(0.5)


def test_avs_miou_uses_strict_sigmoid_threshold():
    m = AVSMIoU()  # logit 0 -> probability 0.5, not > 0.5: background, IoU 0 against a full mask
    m.update(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    assert m.compute().item() == 0.0


# ----------------------------------------------------------------------------------------------- AVS F-score


def _f_curve_by_hand(probs: list[float], gt: list[bool], beta2: float = 0.3, n: int = 255) -> list[float]:
    curve = []
    for i in range(n):
        t = i * (1 - 1e-10) / (n - 1)
        pred = [p >= t for p in probs]
        tp = sum(1 for p, g in zip(pred, gt) if p and g)
        prec, rec = tp / (sum(pred) + 1e-20), tp / (sum(gt) + 1e-20)
        denom = beta2 * prec + rec
        curve.append((1 + beta2) * prec * rec / denom if denom > 0 else 0.0)
    return curve


def _fscore_by_hand(probs: torch.Tensor, target: torch.Tensor, empty_video: str = "skip") -> float:
    """Plain-loop AVSBench F-score over (V, F, H, W) probabilities and masks."""
    scores = []
    for v in range(probs.shape[0]):
        curves = [
            _f_curve_by_hand(probs[v, f].flatten().tolist(), target[v, f].flatten().bool().tolist())
            for f in range(probs.shape[1])
            if target[v, f].sum() > 0
        ]
        if curves:
            scores.append(max(sum(c[i] for c in curves) / len(curves) for i in range(len(curves[0]))))
        elif empty_video == "zero":
            scores.append(0.0)
    return sum(scores) / len(scores)


def test_avs_fscore_single_frame_by_hand():
    # probabilities 0.9, 0.6, 0.3, 0.1 with foreground at 0.9 and 0.3; as the threshold rises the predicted set
    # is 4, 3, 2, 1, 0 pixels: (P, R) = (1/2, 1), (2/3, 1), (1/2, 1/2), (1, 1/2), (0, 0) and
    # F = 1.3 P R / (0.3 P + R) = 13/23, 13/18, 1/2, 13/16, 0 -> max 13/16
    m = AVSFScore()
    m.update(_logits([0.9, 0.6, 0.3, 0.1]).view(1, 1, 2, 2), torch.tensor([1, 0, 1, 0]).view(1, 1, 2, 2))
    assert m.compute().item() == pytest.approx(13 / 16)


def test_avs_fscore_max_of_mean_curve_by_hand():
    # frame 0 as above: F = 13/23 (t <= .1), 13/18 (.1, .3], 1/2 (.3, .6], 13/16 (.6, .9], 0 above.
    # frame 1, foreground at 0.35 only: F = 0.325/1.075 (t <= .15), 1.3/3.3 (.15, .25], 13/23 (.25, .35], 0 above.
    # The mean curve peaks on (.25, .3] at (13/18 + 13/23) / 2; the mean of per-frame maxima would be
    # (13/16 + 13/23) / 2. Frame 2 has an empty mask and must not enter the mean.
    probs = torch.tensor([[0.9, 0.6, 0.3, 0.1], [0.25, 0.35, 0.8, 0.15], [0.9, 0.9, 0.9, 0.9]])
    target = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    m = AVSFScore()
    m.update(_logits(probs).view(1, 3, 2, 2), target.view(1, 3, 2, 2))
    assert m.compute().item() == pytest.approx((13 / 18 + 13 / 23) / 2)
    # leaving frame 0 out with frame_mask leaves frame 1 alone: max 13/23
    masked = AVSFScore()
    masked.update(_logits(probs).view(1, 3, 2, 2), target.view(1, 3, 2, 2), frame_mask=torch.tensor([[0, 1, 1]]).bool())
    assert masked.compute().item() == pytest.approx(13 / 23)


def test_avs_fscore_matches_plain_python_loops():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 3, 5, generator=gen) * 2
    target = torch.rand(3, 4, 3, 5, generator=gen) > 0.6
    target[0, 1] = False  # an empty frame inside a video
    target[2] = False  # a video with no non-empty frame
    probs = torch.sigmoid(logits)
    for empty_video in ("skip", "zero"):
        m = AVSFScore(empty_video=empty_video)
        m.update(logits, target)
        assert m.compute().item() == pytest.approx(_fscore_by_hand(probs, target, empty_video), abs=1e-6)


def test_f_curves_equal_direct_comparison_including_ties():
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    assert thresholds[-1].item() == 1.0  # float32 rounds the official end point to 1
    gen = torch.Generator().manual_seed(4)
    # probabilities sitting exactly on thresholds (ties), the extremes, and random values
    probs = torch.cat([thresholds[torch.randint(0, 255, (3, 40), generator=gen)], torch.rand(3, 40, generator=gen)], 1)
    probs[:, 0], probs[:, 1] = 0.0, 1.0
    gt = torch.rand(3, 80, generator=gen) > 0.5
    pred = probs[:, None, :] >= thresholds[None, :, None]  # (3, 255, 80)
    tp = (pred & gt[:, None]).sum(-1).double()
    precision = tp / (pred.sum(-1).double() + 1e-20)
    recall = tp / (gt.sum(-1, keepdim=True).double() + 1e-20)
    expected = torch.nan_to_num(1.3 * precision * recall / (0.3 * precision + recall), nan=0.0)
    torch.testing.assert_close(_f_curves(probs, gt, thresholds, 0.3), expected)


def test_avs_fscore_skips_or_zeroes_empty_videos():
    logits = torch.full((2, 2, 3, 3), -10.0)
    target = torch.zeros(2, 2, 3, 3)
    target[0, 0, 1, 1] = 1
    logits[0, 0, 1, 1] = 10.0  # perfect on video 0's only non-empty frame; video 1 has empty masks only
    skip, zero = AVSFScore(), AVSFScore(empty_video="zero")
    skip.update(logits, target)
    zero.update(logits, target)
    assert skip.compute().item() == pytest.approx(1.0)
    assert zero.compute().item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="empty_video must be one of"):
        AVSFScore(empty_video="drop")


def test_avs_fscore_chunking_does_not_change_the_result():
    gen = torch.Generator().manual_seed(5)
    logits, target = torch.randn(3, 5, 8, 8, generator=gen), torch.rand(3, 5, 8, 8, generator=gen) > 0.7
    one, chunked = AVSFScore(), AVSFScore(frames_per_chunk=2)
    one.update(logits, target)
    chunked.update(logits, target)
    assert one.compute().item() == chunked.compute().item()


@pytest.mark.parametrize("cls", [AVSMIoU, AVSFScore])
def test_avs_input_errors(cls):
    with pytest.raises(ValueError, match=r"logits \(1, 2, 3, 3\) and target \(1, 2, 3, 4\)"):
        cls().update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    with pytest.raises(ValueError, match=r"logits \(2, 3, 3\)"):
        cls().update(torch.zeros(2, 3, 3), torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="frame_mask"):
        cls().update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), frame_mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1 target"):
        cls().update(torch.zeros(1, 2, 3, 3), torch.full((1, 2, 3, 3), 0.5))


# ----------------------------------------------------------------------------------------------- AVE


def test_segment_accuracy_counts_seconds():
    logits = torch.zeros(2, 3, 4)  # (B, T, C)
    logits[0, :, 1] = 1  # video 0 predicts class 1 every second
    logits[1, :, 3] = 1  # video 1 predicts class 3
    target = torch.tensor([[1, 1, 0], [3, 2, 2]])  # 2 + 1 of 6 seconds correct
    m = SegmentAccuracy(num_classes=4)
    m.update(logits, target)
    assert m.compute().item() == pytest.approx(3 / 6)
    ref = MulticlassAccuracy(num_classes=4, average="micro")
    ref.update(logits.flatten(0, 1), target.flatten())
    assert m.compute().item() == ref.compute().item()
    with pytest.raises(ValueError, match=r"logits \(2, 4, 3\) and target \(2, 3\)"):
        m.update(logits.transpose(1, 2), target)


# ----------------------------------------------------------------------------------------------- all metrics


def _cases():
    gen = torch.Generator().manual_seed(2)
    xy = torch.rand(7, 2, generator=gen) * 10
    boxes = torch.cat([xy, xy + 1 + torch.rand(7, 2, generator=gen) * 5], -1)  # (7, 4)
    pred_boxes = boxes + torch.randn(7, 4, generator=gen)
    masks = torch.rand(7, 5, 6, generator=gen) > 0.5
    probs = torch.rand(7, 5, 6, generator=gen)
    avs_logits = torch.randn(7, 3, 4, 4, generator=gen)
    avs_target = torch.rand(7, 3, 4, 4, generator=gen) > 0.7
    avs_target[1] = False
    frame_mask = torch.rand(7, 3, generator=gen) > 0.3
    seg_logits, seg_target = torch.randn(7, 10, 29, generator=gen), torch.randint(0, 29, (7, 10), generator=gen)
    return [
        (BoxAccuracy, (pred_boxes, boxes)),
        (MaskMIoU, (probs, masks)),
        (MaskOIoU, (probs, masks)),
        (AVSMIoU, (avs_logits, avs_target)),
        (AVSMIoU, (avs_logits, avs_target, frame_mask)),
        (AVSFScore, (avs_logits, avs_target)),
        (AVSFScore, (avs_logits, avs_target, frame_mask)),
        (lambda: SegmentAccuracy(29), (seg_logits, seg_target)),
    ]


@pytest.mark.parametrize("case", range(8))
def test_results_do_not_depend_on_batching_or_process_split(case):
    cls, args = _cases()[case]
    whole = cls()
    whole.update(*args)
    expected = whole.compute()
    assert expected.shape == () and expected.dtype == torch.float32
    for cut in (1, 3, 6):
        batched = cls()
        batched.update(*(a[:cut] for a in args))
        batched.update(*(a[cut:] for a in args))
        assert batched.compute().item() == pytest.approx(expected.item(), rel=1e-6)
        # two "processes" merged as DDP's sum reduction would: the states add up
        rank0, rank1 = cls(), cls()
        rank0.update(*(a[:cut] for a in args))
        rank1.update(*(a[cut:] for a in args))
        rank0.merge_state(rank1)
        assert rank0.compute().item() == pytest.approx(expected.item(), rel=1e-6)
