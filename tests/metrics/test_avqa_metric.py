"""MUSIC-AVQA accuracy: hand-computed overall, per-modality (micro, as the official evaluation) and per-type values,
independence of batching, its input checks, and question types without a question: absent (no key, a warning
naming the type), never NaN in the logged metrics or metrics.json."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from cola.data.avqa_annotations import TYPE_KEYS
from cola.metrics import AVQA_KEYS, AVQAAccuracy, avqa_metrics
from cola.metrics.avqa import absent_keys
from cola.runio import write_metrics
from cola.tasks.av_qa import AVQATask
from tests.tasks.test_avqa_task import FakeEncoder

# question types: 0 audio_counting, 1 audio_comparative, 2 visual_counting, 4 audiovisual_existential,
# 8 audiovisual_temporal (3, 5, 6, 7 absent)
QTYPE = torch.tensor([0, 0, 0, 1, 2, 2, 4, 8, 8, 8])
TARGET = torch.tensor([1, 2, 3, 0, 5, 5, 1, 4, 4, -1])
PREDS = torch.tensor([1, 2, 0, 1, 5, 0, 1, 4, 0, 0])  # hits: 1 1 0 0 1 0 1 1 0 0 (a -1 target is never a hit)
ABSENT = ("acc_visual_location", "acc_audiovisual_counting", "acc_audiovisual_location", "acc_audiovisual_comparative")


def _all(metric: AVQAAccuracy) -> dict[str, float]:
    return {k: float(v) for k, v in metric.compute_all().items()}


def test_hand_computed_values(caplog):
    metric = AVQAAccuracy()
    metric.update(PREDS, TARGET, QTYPE)
    with caplog.at_level(logging.WARNING, logger="cola.metrics.avqa"):
        got = _all(metric)
    assert set(got) == set(AVQA_KEYS) - set(ABSENT) and len(AVQA_KEYS) == 4 + 9
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
    # no question of these types (the official script divides by zero): left out with one warning naming them
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert all(key[4:] in caplog.text for key in ABSENT) and "audio_counting" not in caplog.text
    for key in ABSENT:
        alone = AVQAAccuracy(key)
        alone.update(PREDS, TARGET, QTYPE)
        assert math.isnan(float(alone.compute()))  # compute() alone must return a tensor: NaN (see absent_keys)


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
        assert float(metric.compute()) == pytest.approx(_all(by_index).get(key, math.nan), nan_ok=True)


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


def _strict_json(text: str) -> dict:
    def refuse(constant: str):
        raise ValueError(f"not valid JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_a_type_without_questions_is_absent_not_nan(tmp_path, caplog, monkeypatch):
    # the metrics a split logs, as the task computes them: QTYPE has no question of the four ABSENT types
    metrics = avqa_metrics()
    for metric in metrics.values():
        metric.update(PREDS, TARGET, QTYPE)
    with caplog.at_level(logging.WARNING, logger="cola.metrics.avqa"):
        assert absent_keys(metrics, where="val") == list(ABSENT)
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.getMessage().startswith("MUSIC-AVQA val: no question of")
    assert "\n" not in record.getMessage() and all(key[4:] in record.getMessage() for key in ABSENT)
    assert absent_keys(avqa_metrics()) == []  # never updated (an unreadable split): not this case

    # the task logs every other key, none NaN, and warns once naming the types
    task = AVQATask(FakeEncoder(), num_answers=7, d_model=16)
    for metric in task.metrics_of("test").values():
        metric.update(PREDS, TARGET, QTYPE)
    logged: dict[str, float] = {}
    monkeypatch.setattr(task, "log_dict", lambda values, **kwargs: logged.update(values))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cola.metrics.avqa"):
        values = task._log_and_reset("test")
    assert values == logged and set(logged) == {f"test/{k}" for k in AVQA_KEYS if k not in ABSENT}
    assert all(math.isfinite(v) for v in logged.values()) and logged["test/acc"] == pytest.approx(0.5)
    assert len(caplog.records) == 1 and "MUSIC-AVQA test: no question of" in caplog.text
    assert "audiovisual_temporal" not in caplog.text.split(";")[0]  # a type with questions is not named
    assert all(m.update_count == 0 for m in task.metrics_of("test").values())  # all reset for the next epoch

    # metrics.json: strict JSON without the absent keys; a NaN from elsewhere is left out too, with a warning
    with caplog.at_level(logging.WARNING, logger="cola.runio"):
        write_metrics(tmp_path, {**values, "val/acc": math.nan, "params/total": 3})
    written = _strict_json((tmp_path / "metrics.json").read_text())
    assert written == {**values, "params/total": 3}
    assert "val/acc left out" in caplog.text
