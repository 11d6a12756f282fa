"""The AVQA task and head on a fake three-stream encoder: input layout (B*T vision/audio rows, B text rows), pooling,
loss, metrics, and a fast_dev_run on the synthetic set; then ``train.py task=avqa debug=fast`` end to end through the
real three-tower encoder (a subprocess, :func:`test_train_py_task_avqa_end_to_end`). Learning above the floor and
above the frozen towers: tests/tasks/test_av_learning.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cola.metrics import AVQA_KEYS
from cola.models.heads.avqa import AVQAHead, pool_text
from cola.models.outputs import DualEncoderOutput
from cola.tasks.av_qa import AVQATask
from tests.conftest import TINY_TEST_OVERRIDES, fast_dev_trainer, train_py

WIDTH = {"vision": 12, "audio": 10, "text": 8}
PREFIX = {"vision": 1, "audio": 2, "text": 1}


class _Tower:
    def __init__(self, hidden_size: int) -> None:
        self.hidden_size = hidden_size


class FakeEncoder(nn.Module):
    """Three 'towers' that turn each input row into a few tokens with fixed random maps; records its calls."""

    def __init__(self, streams=("vision", "audio", "text")) -> None:
        super().__init__()
        self.towers = {s: _Tower(WIDTH[s]) for s in streams}
        g = torch.Generator().manual_seed(0)
        self.proj = {s: torch.randn(3, WIDTH[s], generator=g) for s in ("vision", "audio")}
        self.embed = torch.randn(30522, WIDTH["text"], generator=g)
        self.calls: list[tuple[dict, int]] = []

    def forward(self, inputs, rows_per_sample: int = 1) -> DualEncoderOutput:
        self.calls.append(({s: {k: v.shape for k, v in x.items()} for s, x in inputs.items()}, rows_per_sample))
        pix = inputs["vision"]["pixel_values"].mean(dim=(2, 3))  # (N, 3)
        fb = inputs["audio"]["input_values"]  # (N, F, 128)
        aud = torch.stack([fb.mean((1, 2)), fb.std((1, 2)), fb[:, :, :10].mean((1, 2))], dim=-1)  # (N, 3)
        vision = torch.stack([torch.tanh(pix @ self.proj["vision"] * k) for k in (1.0, 2.0, 3.0)], dim=1)  # (N, 3, Cv)
        audio = torch.stack([torch.tanh(aud @ self.proj["audio"] * k) for k in (1.0, 2.0, 3.0, 4.0)], dim=1)
        text = self.embed[inputs["text"]["input_ids"]]  # (B, L, Ct)
        n = vision.shape[0]
        return DualEncoderOutput(
            tokens={"vision": vision, "audio": audio, "text": text},
            masks={
                "vision": torch.ones(n, 3, dtype=torch.bool),
                "audio": torch.ones(n, 4, dtype=torch.bool),
                "text": inputs["text"]["attention_mask"].bool(),
            },
            layers={},
            num_prefix=PREFIX,
        )


def _batch(B: int = 3, T: int = 4, L: int = 6) -> dict:
    g = torch.Generator().manual_seed(1)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[0, 4:] = 0
    return {
        "pixel_values": torch.randn(B, T, 3, 8, 8, generator=g),
        "input_values": torch.randn(B, T, 20, 128, generator=g),
        "input_ids": torch.randint(1000, 2000, (B, L), generator=g) * mask,
        "attention_mask": mask,
        "labels": torch.tensor([0, 3, 5])[:B],
        "question_type": torch.tensor([0, 4, 8])[:B],
    }


def test_inputs_by_stream_and_pooling():
    enc = FakeEncoder()
    task = AVQATask(enc, num_answers=7, d_model=16, pooling="cls")
    batch = _batch()
    out = task(batch)
    assert out["logits"].shape == (3, 7)
    shapes, rows = enc.calls[-1]
    assert rows == {"vision": 4, "audio": 4, "text": 1}  # T segment rows per question, one question row
    assert shapes["vision"]["pixel_values"] == (12, 3, 8, 8) and shapes["audio"]["input_values"] == (12, 20, 128)
    assert shapes["text"]["input_ids"] == (3, 6)
    # the head sees the CLS token of every segment (row b * T + t) and the question's masked mean
    enc_out = enc(task.encoder_inputs(batch), rows_per_sample=4)
    vision = enc_out.tokens["vision"][:, 0].view(3, 4, -1)
    audio = enc_out.tokens["audio"][:, 0].view(3, 4, -1)
    question = pool_text(enc_out.tokens["text"], enc_out.masks["text"], 1, "cls")
    task.eval()
    torch.testing.assert_close(task(batch)["logits"], task.head(vision, audio, question))
    mean_task = AVQATask(FakeEncoder(), num_answers=7, d_model=16, pooling="mean").eval()
    enc_out = mean_task.encoder(mean_task.encoder_inputs(batch), rows_per_sample=4)
    expected = mean_task.head(
        enc_out.tokens["vision"][:, 1:].mean(1).view(3, 4, -1),
        enc_out.tokens["audio"][:, 2:].mean(1).view(3, 4, -1),
        pool_text(enc_out.tokens["text"], enc_out.masks["text"], 1, "mean"),
    )
    torch.testing.assert_close(mean_task(batch)["logits"], expected)


def test_loss_gradients_and_metrics():
    task = AVQATask(FakeEncoder(), num_answers=7, d_model=16)
    batch = _batch()
    out = task(batch)
    loss, terms = task.compute_loss(out, batch)
    torch.testing.assert_close(loss, F.cross_entropy(out["logits"], batch["labels"]))
    assert set(terms) == {"ce"}
    loss.backward()
    assert all(p.grad is not None for n, p in task.head.named_parameters()), "every head parameter gets a gradient"
    ignored = {**batch, "labels": torch.tensor([0, -1, 5])}
    loss_ignored, _ = task.compute_loss(out, ignored)
    torch.testing.assert_close(loss_ignored, F.cross_entropy(out["logits"][[0, 2]], torch.tensor([0, 5])))
    with pytest.raises(ValueError, match=r"answer index 7 >= task.module.num_answers=7"):
        task.compute_loss(out, {**batch, "labels": torch.tensor([0, 7, 1])})
    metrics = task.make_metrics()
    assert list(metrics) == list(AVQA_KEYS)
    logits = F.one_hot(torch.tensor([0, 1, 5]), 7).float()  # right, wrong, right
    task.update_metrics(metrics, {"logits": logits}, batch)
    assert float(metrics["acc"].compute()) == pytest.approx(2 / 3)
    assert float(metrics["acc_audiovisual"].compute()) == pytest.approx(1 / 2)
    assert float(metrics["acc_audio_counting"].compute()) == 1.0


def test_bad_configuration():
    with pytest.raises(ValueError, match=r"needs the towers \['vision', 'audio', 'text'\].*missing \['text'\]"):
        AVQATask(FakeEncoder(("vision", "audio")), num_answers=7)
    with pytest.raises(ValueError, match="task.module.pooling must be one of"):
        AVQATask(FakeEncoder(), pooling="max")
    with pytest.raises(ValueError, match="segment_pooling must be one of"):
        AVQATask(FakeEncoder(), segment_pooling="last")
    task = AVQATask(FakeEncoder(), num_answers=7)
    with pytest.raises(ValueError, match="with the same"):
        task.encoder_inputs({**_batch(), "input_values": torch.zeros(3, 2, 20, 128)})


def test_head_gate_starts_closed_and_attention_sees_order():
    torch.manual_seed(0)
    head = AVQAHead(5, 4, 6, num_answers=3, d_model=8, dropout=0.0).eval()
    v, a = torch.randn(2, 3, 5), torch.randn(2, 3, 4)
    q1, q2 = torch.randn(2, 6), torch.randn(2, 6)
    torch.testing.assert_close(head(v, a, q1), head(v, a, q2))  # W_g = 0: the question does not act yet
    torch.testing.assert_close(head(v, a, q1), head(v[:, [2, 0, 1]], a[:, [2, 0, 1]], q1))  # mean: order-free
    nn.init.normal_(head.gate.weight)
    assert not torch.allclose(head(v, a, q1), head(v, a, q2))
    att = AVQAHead(5, 4, 6, num_answers=3, d_model=8, dropout=0.0, segment_pooling="attention", max_segments=3).eval()
    assert not torch.allclose(att(v, a, q1), att(v[:, [2, 0, 1]], a[:, [2, 0, 1]], q1))  # positions: order matters
    with pytest.raises(ValueError, match="4 segments per video exceed max_segments=3"):
        att(torch.randn(2, 4, 5), torch.randn(2, 4, 4), q1)
    with pytest.raises(ValueError, match="disagree on B or T"):
        head(v, a[:, :2], q1)


def test_pool_text_ignores_padding():
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool_text(tokens, mask, 1, "mean")
    torch.testing.assert_close(pooled[0], tokens[0, 1:3].mean(0))
    torch.testing.assert_close(pooled[1], tokens[1, 1:].mean(0))
    torch.testing.assert_close(pool_text(tokens, mask, 1, "cls"), tokens[:, 0])


def test_fast_dev_run_on_the_synthetic_set(tmp_path):
    from cola.data.avqa import AVQADataModule
    from cola.data.avqa_prepare import prepare_avqa
    from cola.data.synthetic import make_synthetic_avqa
    from cola.models import minilm_path

    root = make_synthetic_avqa(tmp_path / "avqa", num_videos=5, seed=0)
    prepare_avqa(root, seconds=2, progress=False)
    dm = AVQADataModule(root=root, tokenizer=minilm_path(), image_size=16, batch_size=4, eval_batch_size=4)
    task = AVQATask(FakeEncoder(), num_answers=42, d_model=16)
    trainer = fast_dev_trainer(tmp_path)
    trainer.fit(task, datamodule=dm)
    (results,) = trainer.test(task, datamodule=dm, verbose=False)
    assert {f"test/{k}" for k in ("acc", "acc_audio", "acc_visual", "acc_audiovisual")} <= set(results)
    assert 0.0 <= results["test/acc"] <= 1.0


def test_train_py_task_avqa_end_to_end(tmp_path):
    """``python train.py task=avqa debug=fast`` with the tiny test towers (ViT, AST and BERT: the real three-tower
    :class:`cola.models.DualEncoder` with CoLA adapters, not the fake encoder above): the task's own builder
    generates and prepares a 5-video synthetic set under ``paths.data_dir``, the run folder goes under
    ``paths.output_dir``; one batch per stage, then metrics.json with the AVQA keys and floor."""
    data, out = tmp_path / "data", tmp_path / "outputs"
    res = train_py(
        *TINY_TEST_OVERRIDES,
        "task=avqa",
        "debug=fast",
        "peft=cola",
        "task.synthetic.builder.num_videos=5",  # 3 / 1 / 1 videos, 4 questions each
        f"paths.data_dir={data}",
        f"paths.output_dir={out}",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (data / "synthetic_avqa" / "prepare_report.json").is_file()  # built by task.synthetic.builder
    (run,) = (out / "avqa" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values()), metrics
    allowed = {f"{split}/{k}" for split in ("val", "test") for k in (*AVQA_KEYS, "acc_majority")}
    scores = {k: v for k, v in metrics.items() if not k.startswith(("params/", "time/"))}
    assert set(scores) <= allowed, set(scores) - allowed
    for split in ("val", "test"):
        assert {f"{split}/acc", f"{split}/acc_majority"} <= set(scores)
        # every question has a modality: at least one of the per-modality accuracies is there
        assert any(f"{split}/acc_{m}" in scores for m in ("audio", "visual", "audiovisual"))
        assert all(0.0 <= v <= 1.0 for k, v in scores.items() if k.startswith(split))
    assert 0 < metrics["params/trainable"] < metrics["params/total"]  # frozen towers, trained adapters and head
    from safetensors import safe_open

    with safe_open(str(run / "adapter.safetensors"), "pt") as f:
        adapted = {k.split(".")[2] for k in f.keys() if k.startswith("encoder.towers.") and k.endswith(".cola_A")}
    assert adapted == {"vision", "audio", "text"}  # CoLA adapters in all three towers
