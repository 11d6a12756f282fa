"""Bad inputs, table-driven. Each is rejected before any long work with a clear error, skipped with a counted
warning, or turned into a valid sample; none ends an epoch half-way.

Tables: ``CONFIG_CASES`` (harness checks before data loading / model building), ``DATA_CASES`` (corrupt or
malformed dataset files of RefCOCO, AVSBench and AVE) and ``SAMPLE_CASES`` (odd but valid RefCOCO samples).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from cola import harness
from cola.data.ave import AVEDataModule
from cola.data.avs import AVSDataModule
from cola.data.refcoco import GroundingSample, RefCOCODataModule, RefCOCODataset, box_mask, load_tokenizer
from cola.data.transforms import GroundingTransform
from cola.metrics import BoxAccuracy
from cola.models.encoders import minilm_path
from cola.models.losses import box_losses
from cola.validation import SetupError
from tests.conftest import FAST_RUN, cli_args, compose_cfg, fast_cfg, train_py


# ================================================================================= configuration, before work
@dataclass(frozen=True)
class ConfigCase:
    """A bad configuration: harness.train must raise SetupError matching ``match`` before ``not_before``."""

    overrides: tuple[str, ...]
    match: str
    not_before: str  # "data": no data/model work; "model": no model building; "trainer": no Trainer/training
    tiny: bool = True
    synthetic: bool = True  # data.root = the synthetic set (else "{empty}" in overrides is an empty folder)
    grounding: bool = True  # the grounding run's fast overrides apply (else debug=fast only)


CONFIG_CASES = {
    "rank_wider_than_a_layer": ConfigCase(
        ("peft.rank=128", "peft.alpha=128"),
        r"peft\.rank=128 is larger than the width of \d+ adapted layer.*min\(d_in, d_out\) = 64",
        "trainer",
    ),
    "target_matching_nothing": ConfigCase(
        ("model.targets.vit=[attn.qkvv]",),
        r"model\.targets\.vit .*'attn\.qkvv' matches no nn\.Linear.*attn\.qkv",
        "trainer",
    ),
    "empty_target_list": ConfigCase(("model.targets.bert=[]",), r"model\.targets\.bert .*targets is empty", "trainer"),
    "unequal_depths_without_layer_map": ConfigCase(
        ("model.vision.depth=3",), r"different depths \(a: 3 blocks, b: 2 blocks\).*peft\.layer_map", "trainer"
    ),
    "task_model_mismatch": ConfigCase(
        ("task=ave", "model=dinov2_bert"),
        r"task ave runs the towers \[.vision., .audio.\].*pick a model with a audio tower.*model=dinov2_ast",
        "data",
        tiny=False,
        grounding=False,
    ),
    "missing_refcoco_files": ConfigCase(
        ("data.root={empty}",),
        r"not found.*refs\(unc\)\.p  <- missing.*instances\.json  <- missing",
        "model",
        synthetic=False,
    ),
    "missing_avsbench_files": ConfigCase(
        ("task=avs_s4", "data.root={empty}"),
        r"MISSING .*Single-source/s4_meta_data\.csv",
        "model",
        synthetic=False,
        grounding=False,
    ),
    "unprepared_ave": ConfigCase(
        ("task=ave", "data.root={empty}"),
        r"missing split file.*trainSet\.txt.*scripts/prepare_ave\.py",
        "model",
        synthetic=False,
        grounding=False,
    ),
    "mean_with_padding_needs_fixed_padding": ConfigCase(
        ("peft.condition_pooling=mean_with_padding",),
        r"mean_with_padding.*set data\.pad_to=max_length",
        "data",
    ),
    "wandb_online_without_credentials": ConfigCase(
        ("logger=wandb", "logger.wandb.offline=false"), r"no W&B credentials.*wandb login", "data"
    ),
    "unknown_non_finite_policy": ConfigCase(
        ("optim.on_nonfinite=ignore",), r"optim\.on_nonfinite must be one of", "trainer"
    ),
    "mean_with_padding_per_stream_needs_fixed_padding": ConfigCase(
        ("peft.condition_pooling={vision:mean,text:mean_with_padding}",),
        r"mean_with_padding.*set data\.pad_to=max_length",
        "data",
    ),
    "unknown_grounding_head": ConfigCase(
        ("task.head.name=eevg",), r"task\.head\.name must be one of \['official', 'fusion'\], got 'eevg'", "data"
    ),
    "elimination_asked_of_the_fusion_head": ConfigCase(
        ("task.head.name=fusion", "task.head.eliminate=true"), r"task\.head\.eliminate=true needs", "data"
    ),
    "unknown_selection_on_ties": ConfigCase(
        ("callbacks.model_checkpoint.select_ties=last",),
        r"callbacks\.model_checkpoint\.select_ties must be one of \['earlier', 'later'\], got 'last'",
        "data",
    ),
    "unknown_audio_channel": ConfigCase(
        ("task=ave", "data.audio_channel=left"),
        r"data\.audio_channel must be one of \['first', 'mean'\], got 'left'",
        "data",
        tiny=False,
        synthetic=False,
        grounding=False,
    ),
}


@pytest.mark.parametrize("case", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_bad_configuration_fails_before_work(case, synthetic_refcoco, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    overrides = [o.replace("{empty}", str(empty)) for o in case.overrides]
    if case.synthetic:
        overrides.append(f"data.root={synthetic_refcoco}")
    run_dir = tmp_path / "run"
    cfg = compose_cfg([*(FAST_RUN if case.grounding else ["debug=fast"]), *overrides], tiny=case.tiny, run_dir=run_dir)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc

    def reached(stage: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"{stage} started although the configuration is bad")

        return fail

    stages = ["data", "model", "trainer"]
    patch = {"data": "resolve_data_root", "model": "build_encoder", "trainer": "build_trainer"}
    for stage in stages[stages.index(case.not_before) :]:
        monkeypatch.setattr(harness, patch[stage], reached(stage))
    with pytest.raises(SetupError) as info:
        harness.train(cfg, run_dir)
    assert re.search(case.match, str(info.value), re.S), str(info.value)
    assert not (run_dir / "config.yaml").exists()


def test_unknown_group_option_is_hydras_error_naming_it():
    res = train_py("peft=colaa", "hydra.run.dir=/nonexistent/never")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        "error: peft=colaa: no such option (did you mean peft=cola?); choices: cola, frozen, full, lora" in res.stderr
    )


def test_train_py_refuses_a_used_run_folder_in_one_paragraph(synthetic_refcoco, tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    res = train_py(*cli_args(synthetic_refcoco, tmp_path))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert f"error: run folder {tmp_path} already holds ['metrics.json']" in res.stderr
    assert "ckpt_path=last" in res.stderr and json.loads((tmp_path / "metrics.json").read_text()) == {}


def test_train_py_reports_a_diverged_run_in_one_paragraph(synthetic_refcoco, tmp_path):
    """A learning rate that overflows the weights: the run stops at the first non-finite loss, exit code 3."""
    res = train_py(*cli_args(synthetic_refcoco, tmp_path, "optim.lr_heads=1e38", "optim.warmup_ratio=0", "logger=none"))
    assert res.returncode == 3, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert re.search(r"error: non-finite (loss|gradients) .* at step \d+", res.stderr)
    assert "on_nonfinite=skip" in res.stderr and not (tmp_path / "metrics.json").exists()


# ================================================================================= numerical faults
class _NaNGradient(torch.autograd.Function):
    """Adds 0 to the loss and NaN to the gradient of its input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.new_full(ctx.shape, float("nan"))


def _poison(monkeypatch, at_step: int, where: str) -> None:
    """Makes the loss (``loss``: NaN predicted boxes) or one head gradient (``grad``) non-finite at ``at_step``."""
    from cola.tasks.grounding import GroundingTask

    original = GroundingTask.compute_loss

    def compute_loss(self, out, batch):
        poisoned = self.training and self.global_step == at_step
        if poisoned and where == "loss":
            out = {**out, "box": out["box"] * float("nan")}
        loss, terms = original(self, out, batch)
        if poisoned and where == "grad":
            head = next(p for n, p in self.named_parameters() if n.startswith("head.") and p.requires_grad)
            loss = loss + _NaNGradient.apply(head)
        return loss, terms

    monkeypatch.setattr(GroundingTask, "compute_loss", compute_loss)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_values_stop_naming_step_terms_and_checkpoint(where, synthetic_refcoco, tmp_path, monkeypatch):
    from cola.tasks.base import NonFiniteLossError

    _poison(monkeypatch, 1, where)  # the second of the run's two steps; last.ckpt is written after each
    cfg = fast_cfg(synthetic_refcoco, tmp_path, "logger=none", "callbacks.model_checkpoint.every_n_train_steps=1")
    with pytest.raises(NonFiniteLossError) as info:
        harness.train(cfg, tmp_path)
    msg = str(info.value)
    what = (
        r"non-finite loss nan at step 1 \(l1=nan, giou=nan" if where == "loss" else r"non-finite gradients at step 1 in"
    )
    assert info.match(what), msg
    assert f"last good checkpoint: {tmp_path / 'checkpoints' / 'last.ckpt'}" in msg and "on_nonfinite=skip" in msg
    if where == "grad":
        assert "head." in msg and "l1=" in msg  # the parameter and the (finite) loss terms are named


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_non_finite_values_are_skipped_on_request(where, synthetic_refcoco, tmp_path, monkeypatch, caplog):
    _poison(monkeypatch, 1, where)
    cfg = fast_cfg(synthetic_refcoco, tmp_path, "logger=none", "optim.on_nonfinite=skip")
    with caplog.at_level(logging.WARNING, logger="cola"):
        metrics = harness.train(cfg, tmp_path)
    assert metrics["train/skipped_batches"] == 1
    assert (
        "step 1: non-finite" in caplog.text and ("batch skipped" if where == "loss" else "step skipped") in caplog.text
    )
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


# ================================================================================= dataset files
def _tokenizer_path() -> str:
    return minilm_path()


def refcoco_dm(root: Path) -> RefCOCODataModule:
    return RefCOCODataModule(
        root=root, image_size=56, tokenizer=_tokenizer_path(), batch_size=4, augment=None, limit_per_split=12
    )


def _victim(root: Path) -> Path:
    """The image of the first val sample."""
    return refcoco_dm(root).samples("val")[0].image_path


def _corrupt_image(root: Path) -> None:
    _victim(root).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")


def _truncate_image(root: Path) -> None:
    path = _victim(root)
    Image.new("RGB", (80, 60), (200, 30, 30)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:300])


def _wrong_refs_structure(root: Path) -> None:
    with open(root / "refcoco" / "refs(unc).p", "wb") as f:
        pickle.dump({"refs": []}, f)


def _instances_without_annotations(root: Path) -> None:
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"images": data["images"]}))


def _delete_image(root: Path) -> None:
    _victim(root).unlink()


def avs_dm(root: Path) -> AVSDataModule:
    return AVSDataModule(root=root, subset="s4", image_size=32, batch_size=2)


def _avs_first(root: Path, split: str = "val") -> tuple[str, str]:
    rows = (root / "Single-source" / "s4_meta_data.csv").read_text().splitlines()[1:]
    name, _, category, row_split = next(r.split(",") for r in rows if r.split(",")[3] == split)
    return name, category


def _avs_corrupt_frame(root: Path) -> None:
    name, cat = _avs_first(root)
    (root / "Single-source/s4_data/visual_frames/val" / cat / name / f"{name}_3.png").write_bytes(b"not a png")


def _avs_corrupt_wav(root: Path) -> None:
    name, cat = _avs_first(root, "train")
    (root / "Single-source/s4_data/audio_wav/train" / cat / f"{name}.wav").write_bytes(b"RIFF....WAVEjunk")


def _avs_corrupt_mask(root: Path) -> None:
    name, cat = _avs_first(root)
    (root / "Single-source/s4_data/gt_masks/val" / cat / name / f"{name}_2.png").write_bytes(b"\x89PNG broken")


def _avs_csv_without_category(root: Path) -> None:
    path = root / "Single-source" / "s4_meta_data.csv"
    lines = [",".join(c for i, c in enumerate(line.split(",")) if i != 2) for line in path.read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")


def _avs_csv_names_absent_clip(root: Path) -> None:
    with open(root / "Single-source" / "s4_meta_data.csv", "a") as f:
        f.write("nosuchclip0,0,dog,train\n")


AVE_VIDEOS = {"train": ["vidtrain0001", "vidtrain0002"], "val": ["vidval000001"], "test": ["vidtest00001"]}


def make_prepared_ave(root: Path) -> Path:
    """A tiny AVE folder in the prepared layout (split files, frames/<id>/<t>.jpg, audio/<id>.wav), no videos."""
    for split, videos in AVE_VIDEOS.items():
        name = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}[split]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("".join(f"Bark&{v}&good&2&6\n" for v in videos))
        for v in videos:
            (root / "frames" / v).mkdir(parents=True)
            for t in range(10):
                Image.new("RGB", (16, 16), (10 * t, 80, 120)).save(root / "frames" / v / f"{t}.jpg")
            (root / "audio").mkdir(exist_ok=True)
            sf.write(root / "audio" / f"{v}.wav", np.full(160000, 0.01, np.float32), 16000)
    return root


def ave_dm(root: Path) -> AVEDataModule:
    return AVEDataModule(root=root, image_size=32, batch_size=2)


def _ave_corrupt_frame(root: Path) -> None:
    (root / "frames" / AVE_VIDEOS["val"][0] / "4.jpg").write_bytes(b"not a jpeg")


def _ave_corrupt_wav(root: Path) -> None:
    (root / "audio" / f"{AVE_VIDEOS['train'][0]}.wav").write_bytes(b"RIFF garbage")


def _ave_split_names_absent_video(root: Path) -> None:
    with open(root / "trainSet.txt", "a") as f:
        f.write("Bark&absentvideo1&good&0&10\n")


def _ave_row_missing_fields(root: Path) -> None:
    with open(root / "valSet.txt", "a") as f:
        f.write("Bark&vidval000002&good\n")


@dataclass(frozen=True)
class DataCase:
    """A damaged dataset: ``outcome`` is ``reject`` (validate raises ``match``), ``drop`` (validate drops
    ``count`` rows with a warning matching ``match``) or ``skip`` (a full pass over every loader skips ``count``
    samples with warnings matching ``match``)."""

    family: str
    damage: Callable[[Path], None]
    outcome: str
    match: str
    count: int = 1


DATA_CASES = {
    "refcoco_corrupt_image": DataCase("refcoco", _corrupt_image, "skip", r"cannot decode image .*skipping its samples"),
    "refcoco_truncated_image": DataCase("refcoco", _truncate_image, "skip", r"(?i)cannot decode image .*truncated"),
    "refcoco_refs_of_wrong_structure": DataCase(
        "refcoco", _wrong_refs_structure, "reject", r"refs\(unc\)\.p must hold a non-empty list of ref dicts"
    ),
    "refcoco_instances_without_annotations": DataCase(
        "refcoco", _instances_without_annotations, "reject", r"instances\.json must be COCO json with lists"
    ),
    "refcoco_missing_image": DataCase("refcoco", _delete_image, "reject", r"1 of the \d+ images .* are missing"),
    "avs_corrupt_frame": DataCase("avs", _avs_corrupt_frame, "skip", r"skipping clip .*UnidentifiedImageError"),
    "avs_corrupt_wav": DataCase("avs", _avs_corrupt_wav, "skip", r"skipping clip .*a file could not be read"),
    "avs_corrupt_mask": DataCase("avs", _avs_corrupt_mask, "skip", r"skipping clip"),
    "avs_csv_missing_column": DataCase(
        "avs", _avs_csv_without_category, "reject", r"s4_meta_data\.csv lacks the column\(s\) \['category'\]"
    ),
    "avs_csv_names_absent_clip": DataCase(
        "avs", _avs_csv_names_absent_clip, "drop", r"dropped 1 of \d+ clips .*nosuchclip0"
    ),
    "ave_corrupt_frame": DataCase("ave", _ave_corrupt_frame, "skip", r"skipping video 'vidval000001'.*4\.jpg"),
    "ave_corrupt_wav": DataCase("ave", _ave_corrupt_wav, "skip", r"skipping video 'vidtrain0001'"),
    "ave_split_names_absent_video": DataCase(
        "ave", _ave_split_names_absent_video, "drop", r"dropped 1 of \d+ split rows .*absentvideo1"
    ),
    "ave_split_row_missing_fields": DataCase(
        "ave", _ave_row_missing_fields, "reject", r"valSet\.txt, line 2.*Category&VideoID&Quality&Start&End"
    ),
}
BUILDERS = {"refcoco": refcoco_dm, "avs": avs_dm, "ave": ave_dm}
LOGGERS = {"refcoco": "cola.data.refcoco", "avs": "cola.data.avs", "ave": "cola.data.ave"}


@pytest.fixture(scope="module")
def avs_root(tmp_path_factory) -> Path:
    from cola.data.synthetic import make_synthetic_avs

    return make_synthetic_avs(tmp_path_factory.mktemp("avs") / "AVSBench", num_s4=5, num_ms3=3)


@pytest.fixture(scope="module")
def ave_root(tmp_path_factory) -> Path:
    return make_prepared_ave(tmp_path_factory.mktemp("ave") / "AVE_Dataset")


def _loaders(dm) -> list:
    return [dm.train_dataloader(), dm.val_dataloader(), *dm.test_dataloader()]


@pytest.mark.parametrize("case", DATA_CASES.values(), ids=DATA_CASES.keys())
def test_damaged_dataset_is_rejected_dropped_or_skipped(case, synthetic_refcoco, avs_root, ave_root, tmp_path, caplog):
    source = {"refcoco": synthetic_refcoco, "avs": avs_root, "ave": ave_root}[case.family]
    root = tmp_path / source.name
    shutil.copytree(source, root)
    case.damage(root)
    dm = BUILDERS[case.family](root)
    caplog.set_level(logging.WARNING, logger=LOGGERS[case.family])
    if case.outcome == "reject":
        with pytest.raises((ValueError, FileNotFoundError), match=case.match):
            dm.setup(None)
        return
    dm.setup(None)
    if case.outcome == "drop":
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert dm.num_dropped == case.count and len(warnings) == 1, warnings  # one warning naming the row
        assert re.search(case.match, warnings[0]), warnings[0]
        return
    batches = [b for loader in _loaders(dm) for b in loader]  # a whole pass over every split: no exception
    assert re.search(case.match, caplog.text, re.S), caplog.text
    assert dm.num_skipped >= case.count
    kept = sum(len(b[next(iter(b))]) for b in batches if b is not None)
    total = sum(len(loader.dataset) for loader in _loaders(dm))
    # a sample is counted once however many loaders read it (RefCOCO's val is also a test split: 2 loaders)
    skipped_loads = sum(len(loader.dataset.skipped) for loader in _loaders(dm))
    assert kept == total - skipped_loads and dm.num_skipped <= skipped_loads


def test_corrupt_mp4_is_reported_by_the_preparation_not_fatal(tmp_path):
    from cola.data import ave_prepare as prepare

    root = make_prepared_ave(tmp_path / "AVE_Dataset")
    (root / "AVE").mkdir()
    (root / "AVE" / "brokenvideo.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    (root / "Annotations.txt").write_text("Category&VideoID&Quality&Start&End\nBark&brokenvideo&good&0&10\n")
    report = prepare.prepare_ave(root, workers=1, progress=False)
    assert [e["video_id"] for e in report["unreadable"]] == ["brokenvideo"]
    assert not (root / "frames" / "brokenvideo").exists()


def test_a_run_over_corrupt_images_completes_and_reports_the_count(synthetic_refcoco, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(synthetic_refcoco, root)
    dm = refcoco_dm(root)
    victims = {s.image_path for s in dm.samples("val")[:1] + dm.samples("testA")[:1]}
    for path in victims:
        path.write_bytes(b"broken")
    run_dir = tmp_path / "run"
    # batch size 1: the first val and testA batches hold nothing readable and are skipped whole
    cfg = fast_cfg(
        root,
        run_dir,
        *("data.batch_size=1", "data.eval_batch_size=1", "trainer.limit_val_batches=8", "trainer.limit_test_batches=8"),
        "logger=none",
    )
    with caplog.at_level(logging.WARNING):
        metrics = harness.train(cfg, run_dir)
    assert metrics["data/skipped_samples"] >= 2
    assert "samples were skipped because their files could not be read" in caplog.text
    assert "val/acc@0.5" in metrics and "testA/acc@0.5" in metrics


# ================================================================================= odd but valid samples
@pytest.fixture(scope="module")
def grounding_dataset_factory(synthetic_refcoco):
    tokenizer = load_tokenizer(_tokenizer_path())
    image = sorted((synthetic_refcoco / "images" / "mscoco" / "images" / "train2014").iterdir())[0]
    width, height = Image.open(image).size

    def make(**fields) -> tuple[RefCOCODataset, int, int]:
        values = dict(
            image_path=image,
            expression="the red circle",
            bbox=(2.0, 3.0, 20.0, 10.0),
            segmentation=None,
            height=None,
            width=None,
            split="val",
        )
        values.update(fields)
        ds = RefCOCODataset(
            [GroundingSample(**values)],
            transform=GroundingTransform(image_size=56),
            tokenizer=tokenizer,
            max_query_len=40,
        )
        return ds, width, height

    return make


def _check_empty_expression(item, tokenizer_ids, w, h):
    assert item["attention_mask"].sum() == 2 and item["input_ids"][:2].tolist() == tokenizer_ids  # [CLS] [SEP]


def _check_long_expression(item, tokenizer_ids, w, h):
    assert item["input_ids"].shape == (40,) and item["attention_mask"].all()
    assert item["input_ids"][-1] == tokenizer_ids[1]  # truncated, still ends with [SEP]


def _check_box_outside(item, tokenizer_ids, w, h):
    x0, y0, x1, y1 = item["orig_box"].tolist()
    assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h  # clipped to the image
    assert torch.isfinite(item["box"]).all() and (item["box"] >= 0).all() and (item["box"] <= 1).all()


def _check_zero_area(item, tokenizer_ids, w, h):
    assert torch.isfinite(item["box"]).all()
    terms = box_losses(item["box"][None].clamp(0, 1), item["box"][None])
    assert all(torch.isfinite(v) for v in terms.values())
    metric = BoxAccuracy()
    metric.update(item["orig_box"][None], item["orig_box"][None])  # even a "perfect" prediction
    assert float(metric.compute()) == 0.0  # a zero-area target is a miss, never NaN


def _check_box_mask(item, tokenizer_ids, w, h):
    expected = box_mask((2.0, 3.0, 20.0, 10.0), h, w)
    assert torch.equal(item["orig_mask"], torch.from_numpy(expected)) and item["mask"].sum() > 0


SAMPLE_CASES = {
    "empty_expression": ({"expression": ""}, _check_empty_expression),
    "very_long_expression": ({"expression": "the small red circle " * 50}, _check_long_expression),
    "box_reaching_outside_the_image": ({"bbox": (50.0, 40.0, 500.0, 400.0)}, _check_box_outside),
    "box_wholly_outside_the_image": ({"bbox": (5000.0, 5000.0, 10.0, 10.0)}, _check_zero_area),
    "zero_area_box": ({"bbox": (10.0, 10.0, 0.0, 0.0)}, _check_zero_area),
    "missing_segmentation": ({"segmentation": None}, _check_box_mask),
    "empty_segmentation": ({"segmentation": []}, None),  # read_refer turns [] into None: see the next test
}


@pytest.mark.parametrize("name", [n for n, (_, check) in SAMPLE_CASES.items() if check is not None])
def test_odd_samples_become_valid_inputs(name, grounding_dataset_factory):
    fields, check = SAMPLE_CASES[name]
    ds, w, h = grounding_dataset_factory(**fields)
    item = ds[0]
    cls_sep = ds.tokenizer("")["input_ids"]
    check(item, cls_sep, w, h)


def test_annotation_without_segmentation_gets_the_box_mask(synthetic_refcoco, tmp_path, caplog):
    root = tmp_path / "data"
    shutil.copytree(synthetic_refcoco, root)
    path = root / "refcoco" / "instances.json"
    data = json.loads(path.read_text())
    for i, ann in enumerate(data["annotations"]):
        if i % 2:
            ann.pop("segmentation")
        else:
            ann["segmentation"] = []
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="cola.data.refcoco"):
        dm = refcoco_dm(root)
        dm.validate()
    assert "have no segmentation" in caplog.text
    sample = dm.samples("val")[0]
    assert sample.segmentation is None
