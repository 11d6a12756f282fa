"""MUSIC-AVQA accuracy: hand-computed overall, per-modality (micro, as the official evaluation) and per-type values,
independence of batching, and its input checks."""

from __future__ import annotations

import math

import pytest
import torch

from cola.data.avqa_annotations import TYPE_KEYS
from cola.metrics import AVQA_KEYS, AVQAAccuracy, avqa_metrics

# question types: 0 audio_counting, 1 audio_comparative, 2 visual_counting, 4 audiovisual_existential,
# 8 audiovisual_temporal (3, 5, 6, 7 absent)
QTYPE = torch.tensor([0, 0, 0, 1, 2, 2, 4, 8, 8, 8])
TARGET = torch.tensor([1, 2, 3, 0, 5, 5, 1, 4, 4, -1])
PREDS = torch.tensor([1, 2, 0, 1, 5, 0, 1, 4, 0, 0])  # hits: 1 1 0 0 1 0 1 1 0 0 (a -1 target is never a hit)


def _all(metric: AVQAAccuracy) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute_all().items()}


def test_hand_computed_values():
    metric = AVQAAccuracy()
    metric.update(PREDS, TARGET, QTYPE)
    got = _all(metric)
    assert set(got) == set(AVQA_KEYS) and len(AVQA_KEYS) == 4 + 9
    assert got["acc"] == pytest.approx(5 / 10)
    assert got["acc_audio_counting"] == pytest.approx(2 / 3)
    assert got["acc_audio_comparative"] == 0.0
    assert got["acc_visual_counting"] == pytest.approx(1 / 2)
    assert got["acc_audiovisual_existential"] == 1.0
    assert got["acc_audiovisual_temporal"] == pytest.approx(1 / 3)
    # modality = correct / questions of the modality (official), not the mean of its type accuracies
    assert got["acc_audio"] == pytest.approx(2 / 4)  # the mean of the two type accuracies would be 1/3
    assert got["acc_visual"] == pytest.approx(1 / 2)
    assert got["acc_audiovisual"] == pytest.approx(2 / 4)
    for key in ("acc_visual_location", "acc_audiovisual_counting", "acc_audiovisual_location"):
        assert math.isnan(got[key])  # no question of that type (the official script divides by zero)


def test_logits_and_indices_agree_and_keys_select():
    logits = torch.nn.functional.one_hot(PREDS, 8).float() + 0.01 * torch.randn(10, 8)
    by_logits, by_index = AVQAAccuracy(), AVQAAccuracy()
    by_logits.update(logits, TARGET, QTYPE)
    by_index.update(PREDS, TARGET, QTYPE)
    assert _all(by_logits) == pytest.approx(_all(by_index), nan_ok=True)
    metrics = avqa_metrics()
    assert list(metrics) == list(AVQA_KEYS) and [f"acc_{k}" for k in TYPE_KEYS] == list(AVQA_KEYS[4:])
    for key, metric in metrics.items():
        metric.update(PREDS, TARGET, QTYPE)
        assert float(metric.compute()) == pytest.approx(_all(by_index)[key], nan_ok=True)


def test_batching_does_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    n = 97
    qtype, target = torch.randint(0, 9, (n,), generator=g), torch.randint(0, 6, (n,), generator=g)
    preds = torch.where(torch.rand(n, generator=g) < 0.6, target, torch.randint(0, 6, (n,), generator=g))
    whole = AVQAAccuracy()
    whole.update(preds, target, qtype)
    pieces = AVQAAccuracy()
    for chunk in torch.arange(n).split(13):
        pieces.update(preds[chunk], target[chunk], qtype[chunk])
    assert _all(pieces) == pytest.approx(_all(whole), nan_ok=True)
    expected = {k: (preds[qtype == i] == target[qtype == i]).double().mean().item() for i, k in enumerate(TYPE_KEYS)}
    assert {k: _all(whole)[f"acc_{k}"] for k in TYPE_KEYS} == pytest.approx(expected)
    whole.reset()
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert math.isnan(float(whole.compute()))  # no question at all


def test_bad_inputs():
    with pytest.raises(ValueError, match="key must be one of .*'acc_audio_counting'.*got 'acc_audio_count'"):
        AVQAAccuracy("acc_audio_count")
    metric = AVQAAccuracy()
    with pytest.raises(ValueError, match=r"preds \(B, A\) or \(B,\), target \(B,\) and question_type \(B,\)"):
        metric.update(PREDS, TARGET[:5], QTYPE)
    with pytest.raises(ValueError, match=r"question_type must be in \[0, 9\), got values \[0, 9\]"):
        metric.update(PREDS[:2], TARGET[:2], torch.tensor([0, 9]))
