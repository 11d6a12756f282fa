"""Floors computed from the data (``DataModule.floor_metrics``, written by the harness to ``metrics.json``) and
skipped samples counted once per sample, for grounding, AVE and AVS."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from cola import harness
from cola.data.ave import AVEDataModule
from cola.data.avs import AVSDataModule
from cola.data.refcoco import RefCOCODataModule
from cola.data.synthetic import make_synthetic_avs
from cola.models.encoders import minilm_path
from tests.conftest import FAST_RUN, compose_cfg


def _loaders(dm) -> list:
    return [dm.train_dataloader(), dm.val_dataloader(), *dm.test_dataloader()]


# ============================================================================================ AVE: majority class
# (split, category, video, start, end): seconds [start, end) carry the event, the others are background
AVE_ROWS = [
    ("train", "Bark", "trainvid0001", 2, 6),  # 4 Bark, 6 background
    ("train", "Bark", "trainvid0002", 0, 10),  # 10 Bark
    ("train", "Violin, fiddle", "trainvid0003", 0, 3),  # 3 Violin, 7 background
    ("val", "Bark", "valvideo0001", 5, 10),  # 5 of 10 seconds Bark
    ("val", "Church bell", "valvideo0002", 0, 10),  # none
    ("test", "Bark", "testvideo001", 0, 8),  # 8 of 10
]
AVE_SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}


def make_tiny_ave(root: Path) -> Path:
    """The prepared AVE layout (split files, frames/<id>/<t>.jpg, audio/<id>.wav) of :data:`AVE_ROWS`."""
    (root / "audio").mkdir(parents=True)
    for split, name in AVE_SPLIT_FILES.items():
        rows = [r for r in AVE_ROWS if r[0] == split]
        (root / name).write_text("".join(f"{c}&{v}&good&{s}&{e}\n" for _, c, v, s, e in rows))
    for _, _, video, _, _ in AVE_ROWS:
        (root / "frames" / video).mkdir(parents=True)
        for t in range(10):
            Image.new("RGB", (16, 16), (20 * t, 90, 140)).save(root / "frames" / video / f"{t}.jpg")
        sf.write(root / "audio" / f"{video}.wav", np.full(160000, 0.01, np.float32), 16000)
    return root


@pytest.fixture(scope="module")
def tiny_ave(tmp_path_factory) -> Path:
    return make_tiny_ave(tmp_path_factory.mktemp("ave") / "AVE_Dataset")


def test_ave_majority_floor_is_the_hand_computed_fraction(tiny_ave):
    # training seconds: Bark 4 + 10 = 14, background 6 + 7 = 13, Violin 3 -> Bark is the majority class
    dm = AVEDataModule(root=tiny_ave, image_size=16, batch_size=2)
    assert dm.floor_metrics() == {"val/acc_majority": 5 / 20, "test/acc_majority": 8 / 10}
    # select_on=test evaluates one split
    assert AVEDataModule(root=tiny_ave, select_on="test").floor_metrics() == {"test/acc_majority": 0.8}


def test_ave_majority_is_counted_over_all_training_seconds_background_included(tmp_path):
    root = make_tiny_ave(tmp_path / "AVE_Dataset")
    with open(root / "trainSet.txt", "a") as f:  # + 2 background seconds: background 15 > Bark 14
        f.write("Violin, fiddle&trainvid0003&good&0&8\n")
    out = AVEDataModule(root=root, image_size=16).floor_metrics()
    assert out == {"val/acc_majority": (5 + 0) / 20, "test/acc_majority": 2 / 10}


def test_ave_floor_leaves_out_the_rows_the_model_was_not_scored_on(tmp_path):
    root = make_tiny_ave(tmp_path / "AVE_Dataset")
    (root / "frames" / "valvideo0002" / "3.jpg").write_bytes(b"not a jpeg")
    dm = AVEDataModule(root=root, image_size=16, batch_size=2)
    dm.setup(None)
    for loader in _loaders(dm):
        list(loader)
    assert dm.num_skipped == 1
    assert dm.floor_metrics() == {"val/acc_majority": 5 / 10, "test/acc_majority": 0.8}


# ============================================================================================ AVS: fixed mask
AVS_SIZE = 32  # the masks are scored at data.image_size; the release PNGs are 224 x 224
A = (slice(0, 16), slice(0, 16))  # top-left quarter at 32 x 32
B = (slice(16, 32), slice(16, 32))  # bottom-right quarter
LEFT = (slice(0, 32), slice(0, 16))  # left half: A and the quarter below it


def _write_mask(path: Path, *regions: tuple[slice, slice]) -> None:
    """A 224 x 224 release-style mask (L, 255 = foreground) that is ``regions`` of the 32 x 32 grid."""
    small = np.zeros((AVS_SIZE, AVS_SIZE), dtype=np.uint8)
    for r in regions:
        small[r] = 255
    Image.fromarray(small).resize((224, 224), Image.NEAREST).save(path)


@pytest.fixture(scope="module")
def hand_avs(tmp_path_factory) -> Path:
    """The synthetic S4 set with 3 training and 2 evaluated clips (one val, one test), masks redrawn by hand."""
    root = make_synthetic_avs(tmp_path_factory.mktemp("avs") / "AVSBench", num_s4=5, num_ms3=3, seed=0)
    dm = AVSDataModule(root=root, subset="s4", image_size=AVS_SIZE)
    dm.validate()
    train, (val,), (test,) = dm.clips["train"], dm.clips["val"], dm.clips["test"]
    assert len(train) == 3 and all(m is None for c in train for m in c.masks[1:])  # S4 train: frame 1 only
    # training masks: A in all three, B in one -> mean 1 on A, 1/3 on B -> the fixed mask is A
    _write_mask(train[0].masks[0], A, B)
    _write_mask(train[1].masks[0], A)
    _write_mask(train[2].masks[0], A)
    for path, regions in zip(val.masks, [(A,), (), (LEFT,), (B,), (A, B)]):
        _write_mask(path, *regions)
    for path in test.masks:
        _write_mask(path, B)
    return root


def _f(precision: float, recall: float) -> float:
    return 1.3 * precision * recall / (0.3 * precision + recall) if precision + recall else 0.0


def test_avs_fixed_mask_floor_matches_a_hand_computation(hand_avs):
    dm = AVSDataModule(root=hand_avs, subset="s4", image_size=AVS_SIZE)
    mean = dm.mean_train_mask()
    assert mean.shape == (AVS_SIZE, AVS_SIZE)
    assert (
        mean[A].eq(1).all()
        and mean[B].sub(1 / 3).abs().lt(1e-9).all()
        and float(mean.sum()) == pytest.approx(256 + 256 / 3)
    )
    out = dm.floor_metrics()
    # mIoU per frame (pred = A, 256 of 1024 pixels): A -> 1; empty -> true negatives 768 / 1024; LEFT -> 256 / 512;
    # B -> 0; A + B -> 256 / 512. The test clip (B in every frame) scores 0.
    assert out["val/miou_fixed_mask"] == pytest.approx((1 + 0.75 + 0.5 + 0 + 0.5) / 5, abs=1e-6)
    assert out["test/miou_fixed_mask"] == pytest.approx(0.0, abs=1e-6)
    # F-score: the probabilities are 0 / 1, so threshold 0 predicts every pixel (recall 1, precision |gt| / 1024)
    # and every other threshold predicts A; per clip the curves of the non-empty frames are averaged, then the
    # best threshold is taken.
    all_fg = [_f(256 / 1024, 1), _f(512 / 1024, 1), _f(256 / 1024, 1), _f(512 / 1024, 1)]  # A, LEFT, B, A + B
    fixed = [_f(1, 1), _f(1, 0.5), _f(0, 0), _f(1, 0.5)]
    assert out["val/fscore_fixed_mask"] == pytest.approx(max(np.mean(all_fg), np.mean(fixed)), abs=1e-6)
    assert out["test/fscore_fixed_mask"] == pytest.approx(_f(256 / 1024, 1), abs=1e-6)
    assert set(out) == {f"{s}/{m}_fixed_mask" for s in ("val", "test") for m in ("miou", "fscore")}


def test_avs_fixed_mask_floor_is_the_metrics_on_the_batches_the_model_sees(hand_avs):
    """The floor scores the same frames and validity masks as the task: AVSMIoU / AVSFScore on the loader's
    batches with the fixed mask as every prediction."""
    from cola.metrics import AVSFScore, AVSMIoU

    for subset in ("s4", "ms3"):
        dm = AVSDataModule(root=hand_avs, subset=subset, image_size=AVS_SIZE, batch_size=2, eval_batch_size=3)
        dm.setup(None)
        fixed = (dm.mean_train_mask() > 0.5).float() * 40 - 20  # logits
        expected = {}
        for split, loader in zip(("val", "test"), [dm.val_dataloader(), *dm.test_dataloader()]):
            miou, fscore = AVSMIoU(), AVSFScore()
            for batch in loader:
                pred = fixed.expand_as(batch["masks"])
                miou.update(pred, batch["masks"], batch["mask_valid"])
                fscore.update(pred, batch["masks"], batch["mask_valid"])
            expected |= {
                f"{split}/miou_fixed_mask": float(miou.compute()),
                f"{split}/fscore_fixed_mask": float(fscore.compute()),
            }
        assert dm.floor_metrics() == pytest.approx(expected, abs=1e-6), subset


# ============================================================================================ grounding: fixed box
def old_fixed_box_baseline(dm: RefCOCODataModule) -> dict[str, float]:
    """The grounding floor as the harness computed it before ``floor_metrics`` (``fixed_box_baseline``)."""
    from cola.boxes import box_iou_xyxy

    def relative(samples):
        xywh = torch.tensor([x.bbox for x in samples], dtype=torch.float64)
        size = torch.tensor([[x.width, x.height] * 2 for x in samples], dtype=torch.float64)
        return torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) / size, size

    mean_box = relative(dm.samples(dm.train_split))[0].mean(0)
    out = {}
    for split in dict.fromkeys([dm.val_split, *dm.test_splits]):
        target, size = relative(dm.samples(split))
        iou = box_iou_xyxy(mean_box.expand_as(target) * size, target * size)
        out[f"{split}/acc@0.5_fixed_box"] = float((iou >= 0.5).double().mean())
    return out


@pytest.mark.parametrize("limit", [None, 8])
def test_grounding_floor_is_unchanged(synthetic_refcoco, limit):
    dm = RefCOCODataModule(root=synthetic_refcoco, tokenizer=minilm_path(), limit_per_split=limit)
    out = dm.floor_metrics()
    assert out == old_fixed_box_baseline(dm)
    assert set(out) == {f"{s}/acc@0.5_fixed_box" for s in ("val", "testA", "testB")}


def test_harness_writes_the_floor_of_every_task():
    class Module:
        def floor_metrics(self):
            return {"val/acc_majority": 0.25}

    class Broken:
        def floor_metrics(self):
            raise OSError("a file went missing")

    assert harness.reference_metrics(Module()) == {"val/acc_majority": 0.25}
    assert harness.reference_metrics(Broken()) == {}  # a warning, never the run's metrics.json


# ============================================================================================ skipped samples
@pytest.fixture(scope="module")
def avs_root(tmp_path_factory) -> Path:
    return make_synthetic_avs(tmp_path_factory.mktemp("avs_skip") / "AVSBench", num_s4=20, num_ms3=3, seed=0)


def test_three_corrupt_files_over_two_validation_passes_count_three(avs_root, tmp_path, caplog):
    root = tmp_path / "AVSBench"
    shutil.copytree(avs_root, root)
    dm = AVSDataModule(root=root, subset="s4", image_size=56)
    dm.validate()
    val = dm.clips["val"]
    assert len(val) == 4  # the 4th keeps a validation score
    for clip in val[:3]:  # one frame of each of 3 validation clips
        clip.frames[2].write_bytes(b"not a png")
    run_dir = tmp_path / "run"
    fast = [o for o in FAST_RUN if not o.startswith("task.head.")]  # the grounding head's sizes; AVS has its own
    overrides = [*fast, "task=avs_s4", f"data.root={root}", "logger=none"]
    overrides += ["data.limit_per_split=null", "trainer.max_epochs=2", "trainer.max_steps=-1"]
    overrides += ["trainer.limit_train_batches=1", "trainer.limit_val_batches=null", "trainer.limit_test_batches=null"]
    cfg = compose_cfg([o for o in overrides if not o.startswith("task.module.")], run_dir=run_dir)
    with caplog.at_level(logging.WARNING):
        metrics = harness.train(cfg, run_dir)
    # validation after epochs 1 and 2, the final validation and the test pass (select_on=val: a separate split)
    assert caplog.text.count("skipping clip") >= 3 * 3
    assert metrics["data/skipped_samples"] == 3
    assert {"val/miou_fixed_mask", "test/fscore_fixed_mask"} <= set(metrics)


def test_refcoco_counts_a_validation_sample_once_when_val_is_also_a_test_split(synthetic_refcoco, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synthetic_refcoco, root)
    dm = RefCOCODataModule(root=root, tokenizer=minilm_path(), image_size=56, limit_per_split=8, augment=None)
    assert dm.test_splits[0] == dm.val_split  # unc: val, testA, testB
    victims = {dm.samples(s)[0].image_path for s in ("val", "testA", "testB")}
    assert len(victims) == 3
    for path in victims:
        path.write_bytes(b"broken")
    expected = sum(s.image_path in victims for split in dm.splits for s in dm.samples(split))
    dm.setup(None)
    for _ in range(2):  # two validation passes, then the test pass (which evaluates val again)
        list(dm.val_dataloader())
    for loader in dm.test_dataloader():
        list(loader)
    assert dm.num_skipped == expected


@pytest.mark.parametrize("family", ["ave", "avs"])
def test_av_skips_count_each_sample_once(family, tiny_ave, avs_root, tmp_path):
    if family == "ave":
        root = tmp_path / "AVE_Dataset"
        shutil.copytree(tiny_ave, root)
        for video in ("valvideo0001", "valvideo0002", "testvideo001"):
            (root / "frames" / video / "0.jpg").write_bytes(b"not a jpeg")
        dm = AVEDataModule(root=root, image_size=16, batch_size=2)
    else:
        root = tmp_path / "AVSBench"
        shutil.copytree(avs_root, root)
        dm = AVSDataModule(root=root, subset="s4", image_size=32, batch_size=2)
        dm.validate()
        for clip in [*dm.clips["val"][:2], dm.clips["test"][0]]:
            clip.wav.write_bytes(b"RIFF....WAVEjunk")
    dm.setup(None)
    for _ in range(2):
        list(dm.val_dataloader())
    for loader in dm.test_dataloader():
        list(loader)
    assert dm.num_skipped == 3
