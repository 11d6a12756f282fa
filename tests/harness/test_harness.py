"""End-to-end harness runs: train + test per PEFT method, eval reproduces the run, sweeps and DDP (`make test-ci`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cola import harness
from cola.validation import SetupError
from tests.conftest import cli_args, compose_cfg, fast_cfg, train_py

# A small grounding run on the synthetic set: the conftest's tiny towers, a narrow fusion head, a few batches.
REQUIRED_KEYS = ("val/acc@0.5", "testA/acc@0.5", "testB/oiou", "params/trainable", "params/total")
METHODS = ("lora", "cola", "moka", "vera", "frozen")


@pytest.fixture(scope="module")
def runs(synthetic_refcoco, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """One fast training run per method: method -> (run folder, returned metrics)."""
    out = {}
    for method in METHODS:
        run_dir = tmp_path_factory.mktemp(f"run_{method}")
        metrics = harness.train(fast_cfg(synthetic_refcoco, run_dir, f"peft={method}", "logger=none"), run_dir)
        out[method] = (run_dir, metrics)
    return out


@pytest.mark.parametrize("method", METHODS)
def test_train_writes_the_run_folder(runs, method, synthetic_refcoco):
    from cola.data.refcoco import RefCOCODataModule
    from cola.models import minilm_path

    run_dir, metrics = runs[method]
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written == metrics
    for key in REQUIRED_KEYS:
        assert key in written, f"{key} missing from metrics.json of peft={method}: {sorted(written)}"
    # next to the model's scores, the floor of every evaluated split, computed from the run's data (4 steps do not
    # beat it: acc@0.5 0 like the floor on these 8-sample splits; tests/test_grounding_task.py checks learning)
    floor = RefCOCODataModule(root=synthetic_refcoco, tokenizer=minilm_path(), limit_per_split=8).floor_metrics()
    assert {k: written[k] for k in written if k.endswith("_fixed_box")} == floor
    scores = {k: v for k, v in written.items() if k.split("/")[0] in ("val", "testA", "testB") and k not in floor}
    assert set(scores) == {f"{s}/{m}" for s in ("val", "testA", "testB") for m in ("acc@0.5", "miou", "oiou")}
    assert all(0.0 <= v <= 1.0 for v in scores.values()), scores  # fractions, not percentages
    assert isinstance(written["params/trainable"], int) and 0 < written["params/trainable"] < written["params/total"]
    assert (run_dir / "adapter.safetensors").is_file() and (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_methods_differ_in_trainable_parameters(runs):
    trainable = {m: runs[m][1]["params/trainable"] for m in METHODS}
    # frozen trains the heads only; every adapter method adds to that
    assert all(trainable[m] > trainable["frozen"] for m in ("lora", "cola", "moka", "vera")), trainable
    assert trainable["vera"] < trainable["lora"], trainable  # r + d_out per layer against r (d_in + d_out)
    assert trainable["cola"] > trainable["lora"], trainable


@pytest.mark.parametrize("method", ["cola", "vera"])  # vera: its frozen random matrices come from the adapter file
def test_eval_reproduces_the_val_metrics(runs, method, tmp_path):
    run_dir, metrics = runs[method]
    cfg = compose_cfg([f"ckpt_path={run_dir}"], config_name="eval", run_dir=tmp_path)
    evaluated = harness.evaluate(cfg, tmp_path, [f"ckpt_path={run_dir}"])
    val = {k: v for k, v in metrics.items() if k.startswith("val/")}
    assert val and {k: evaluated[k] for k in val} == pytest.approx(val, abs=1e-6)
    assert json.loads((tmp_path / "metrics.json").read_text())["val/acc@0.5"] == evaluated["val/acc@0.5"]


def test_adapter_of_another_peft_config_is_a_clear_error(runs, tmp_path):
    run_dir, _ = runs["cola"]
    cfg = compose_cfg([f"ckpt_path={run_dir}"], config_name="eval", run_dir=tmp_path)
    with pytest.raises(SetupError, match=r"another peft config.*rank"):
        harness.evaluate(cfg, tmp_path, [f"ckpt_path={run_dir}", "peft.rank=4", "peft.alpha=4"])


def test_eval_of_a_missing_path_names_it(tmp_path):
    cfg = compose_cfg([f"ckpt_path={tmp_path / 'nope'}"], config_name="eval", run_dir=tmp_path)
    with pytest.raises(SetupError, match="nope.*does not exist"):
        harness.evaluate(cfg, tmp_path, [])


def test_composed_config_keeps_its_hydra_node_out_of_config_yaml(synthetic_refcoco, tmp_path):
    # a composed config carries `hydra`, whose sweep.subdir (${hydra.job.num}) only resolves inside a Hydra job
    text = harness.job_config_yaml(fast_cfg(synthetic_refcoco, tmp_path))
    assert "hydra:" not in text and "peft:" in text and str(synthetic_refcoco) in text


# ------------------------------------------------------------------------------------------------ atomic outputs
def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_crash_while_writing_text_keeps_the_previous_file(tmp_path, monkeypatch):
    from cola import io

    target = tmp_path / "metrics.json"
    io.atomic_write_text(target, '{"val/acc@0.5": 0.5}')

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "fsync", fail)  # the new content is half-way to disk when the crash comes
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_text(target, '{"val/acc@0.5": 0.9, "truncated')
    assert json.loads(target.read_text()) == {"val/acc@0.5": 0.5} and not _leftovers(tmp_path)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch

    from cola.callbacks import checkpoints

    target = tmp_path / "last.ckpt"
    checkpoints.AtomicCheckpointIO().save_checkpoint({"global_step": 3}, target)

    def half_save(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(checkpoints.torch, "save", half_save)
    with pytest.raises(RuntimeError, match="killed while saving"):
        checkpoints.AtomicCheckpointIO().save_checkpoint({"global_step": 4}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"global_step": 3} and not _leftovers(tmp_path)


def test_crash_while_writing_the_adapter_file_keeps_the_previous_one(tmp_path, monkeypatch):
    import torch
    from torch import nn

    from cola.peft import LoRAConfig, inject_adapters, read_adapters, save_adapters, state

    model = nn.Sequential(nn.Linear(4, 4))
    inject_adapters(model, LoRAConfig(rank=2, alpha=2), ["0"])
    target = save_adapters(tmp_path / "adapter.safetensors", model, config={"method": "lora"})
    before = read_adapters(target)[0]

    def half_written(fd):
        raise RuntimeError("killed while saving")

    monkeypatch.setattr(state.os, "fsync", half_written)  # the new content is half-way to disk when the crash comes
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_" in n).add_(1.0)
    with pytest.raises(RuntimeError, match="killed while saving"):
        save_adapters(target, model, config={"method": "lora"})
    after = read_adapters(target)[0]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not _leftovers(tmp_path)


def test_a_crash_before_the_end_leaves_no_metrics_json(synthetic_refcoco, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("killed while exporting")

    monkeypatch.setattr(harness, "save_adapters", fail)
    with pytest.raises(RuntimeError, match="killed while exporting"):
        harness.train(fast_cfg(synthetic_refcoco, tmp_path, "logger=none"), tmp_path)
    assert not (tmp_path / "metrics.json").exists()  # written last: its presence means the run finished


@pytest.mark.ci
def test_multirun_sweep_writes_one_metrics_json_per_job(synthetic_refcoco, tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in cli_args(synthetic_refcoco, tmp_path / "unused") if not a.startswith("hydra.run.dir")]
    res = train_py("-m", "peft=lora,cola", f"hydra.sweep.dir={sweep}", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    found = sorted(sweep.glob("*/metrics.json"))
    assert [p.parent.name for p in found] == ["0", "1"], res.stdout[-2000:]
    assert all((p.parent / "adapter.safetensors").is_file() for p in found)
    trainable = [json.loads(p.read_text())["params/trainable"] for p in found]
    assert trainable[0] != trainable[1]  # lora and cola train different numbers of parameters


@pytest.mark.ci
def test_two_process_cpu_ddp_runs(synthetic_refcoco, tmp_path):
    run_dir = tmp_path / "ddp"
    res = train_py(
        *cli_args(synthetic_refcoco, run_dir),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "logger=none",
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(k in metrics for k in REQUIRED_KEYS)


def test_wandb_offline_run_and_resume_keep_one_run_id(synthetic_refcoco, tmp_path, monkeypatch):
    """logger=wandb writes an offline W&B run (config, summary) in the run folder; its id lives in the folder,
    so a resumed run logs into the same W&B run."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    cfg = fast_cfg(synthetic_refcoco, run_dir, "peft=lora", "logger=wandb", "trainer.max_steps=2")
    metrics = harness.train(cfg, run_dir)
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    # the offline record (protobuf; `wandb sync` uploads it) holds the resolved config, tags and the metrics
    record = (offline[0] / f"run-{run_id}.wandb").read_bytes()
    for text in ("lr_adapters", "peft:lora", "val/acc@0.5", "testB/oiou", "model/params_trainable"):
        assert text.encode() in record, text
    assert "val/acc@0.5" in metrics
    # the run folder's id is reused by the loggers of a resumed run
    from lightning.pytorch.loggers import WandbLogger

    wb = [lg for lg in harness.instantiate_loggers(cfg) if isinstance(lg, WandbLogger)]
    assert wb and wb[0]._wandb_init["id"] == run_id and wb[0]._wandb_init["resume"] == "allow"


def test_monitor_mask_reports_mask_metrics_from_the_best_mask_checkpoint(synthetic_refcoco, tmp_path, monkeypatch):
    """task.monitor_mask (official grounding): a second best checkpoint by val/miou; the run's miou/oiou are that
    checkpoint's, its box metrics the best-box checkpoint's. The validation scores the checkpoints see while fitting
    are scripted so that box and mask peak in different epochs: the two checkpoints hold different weights, and their
    real miou/oiou differ. Box accuracy is 0 at both after 4 steps, so the final passes report it tagged with the
    checkpoint they evaluate."""
    import torch

    from cola.tasks.base import DualStreamTask

    picks = {0: {"val/acc@0.5": 0.9, "val/miou": 0.1}, 1: {"val/acc@0.5": 0.1, "val/miou": 0.9}}  # by epoch
    box_tag = {"best.ckpt": 0.25, "best_mask.ckpt": 0.75}
    real_log_dict = DualStreamTask.log_dict

    def log_dict(self, values, *args, **kwargs):
        if self.trainer.state.fn == "fit":
            if "val/miou" in values:  # a validation while fitting: what the checkpoint callbacks select on
                values = {**values, **picks[self.current_epoch]}
        else:  # a final validate / test pass of one checkpoint
            tag = box_tag[Path(self.trainer.ckpt_path).name]
            values = {k: tag if k.endswith("/acc@0.5") else v for k, v in values.items()}
        return real_log_dict(self, values, *args, **kwargs)

    evaluated = []  # (checkpoint, flat val + test metrics) of each final validate + test pass
    real_validate_and_test = harness.validate_and_test

    def validate_and_test(trainer, module, datamodule, ckpt):
        results = real_validate_and_test(trainer, module, datamodule, ckpt)
        evaluated.append((ckpt, dict(results)))  # a copy: the harness updates the first dict into the run's metrics
        return results

    monkeypatch.setattr(DualStreamTask, "log_dict", log_dict)
    monkeypatch.setattr(harness, "validate_and_test", validate_and_test)
    run = tmp_path / "run"
    overrides = ("task.monitor_mask=val/miou", "trainer.max_epochs=2", "trainer.max_steps=-1")
    metrics = harness.train(fast_cfg(synthetic_refcoco, run, *overrides, "trainer.limit_train_batches=2"), run)
    best, best_mask = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "best_mask.ckpt"
    step = {p.name: torch.load(p, map_location="cpu", weights_only=True)["global_step"] for p in (best, best_mask)}
    assert step == {"best.ckpt": 2, "best_mask.ckpt": 4}  # 2 batches per epoch: box best after epoch 0, mask after 1
    assert [Path(ckpt).name for ckpt, _ in evaluated] == ["best.ckpt", "best_mask.ckpt"]
    box, mask = evaluated[0][1], evaluated[1][1]
    for split in ("val", "testA", "testB"):
        assert metrics[f"{split}/acc@0.5"] == box[f"{split}/acc@0.5"] == box_tag["best.ckpt"]
        for name in ("miou", "oiou"):
            key = f"{split}/{name}"
            assert metrics[key] == mask[key] != box[key], (key, mask[key], box[key])  # each from its own weights


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), ["best", "SaveOnSigterm", "LearningRateMonitor", "LambdaLogger", "ResumeState", "NonFiniteGuard"]),
        (
            ("task.monitor_mask=val/miou", "callbacks.model_checkpoint.every_n_train_steps=3", "logger=none"),
            ["best", "SaveOnSigterm", "best_mask", "periodic", "LambdaLogger", "ResumeState", "NonFiniteGuard"],
        ),
        (
            ("callbacks.early_stopping.patience=2", "analysis.probes=true", "callbacks.lambda_logger=null"),
            ["best", "SaveOnSigterm", "EarlyStopping", "LearningRateMonitor", "InterferenceProbe", "ResumeState"],
        ),
    ],
)
def test_callbacks_group_instantiates_the_enabled_entries_in_order(overrides, expected, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = fast_cfg(tmp_path, tmp_path, *overrides)
    cfg.paths.run_dir = str(tmp_path)
    callbacks = harness.instantiate_callbacks(cfg)
    names = [cb.filename or "periodic" if isinstance(cb, ModelCheckpoint) else type(cb).__name__ for cb in callbacks]
    assert names[: len(expected)] == expected
    best = callbacks[0]
    assert best.dirpath == str(tmp_path / "checkpoints") and best.monitor == "val/acc@0.5" and best.save_last
