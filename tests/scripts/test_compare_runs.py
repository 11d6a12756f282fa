"""scripts/compare_runs.py on a folder of several tasks' runs and on W&B runs: one table per task, rows grouped by
the whole config minus the seed, distinct seeds, duplicate and mixed-group warnings, skipped runs."""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from cola.harness import job_config
from tests.conftest import compose_cfg

REPO = Path(__file__).resolve().parents[2]
TASKS = ("refcoco", "ave", "avs_s4", "avs_ms3")
MAIN_METRIC = {"refcoco": "testA/acc@0.5", "ave": "test/acc", "avs_s4": "test/miou", "avs_ms3": "test/miou"}
BASE = {"refcoco": 0.60, "ave": 0.70, "avs_s4": 0.80, "avs_ms3": 0.50}
PARAMS = {"lora": 1000, "cola": 1500}


def _script():
    spec = importlib.util.spec_from_file_location("compare_runs", REPO / "scripts" / "compare_runs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def mod():
    """The comparison library (scripts/compare_runs.py is its command line)."""
    import cola.compare

    return cola.compare


@pytest.fixture(scope="module")
def script():
    return _script()


_CONFIGS: dict[tuple[str, ...], dict] = {}


def run_config(*overrides: str) -> dict:
    """The ``config.yaml`` train.py writes for these overrides (composed like train.py, data.root resolved)."""
    if overrides not in _CONFIGS:
        cfg = job_config(compose_cfg(list(overrides), tiny=False))
        if cfg["data"].get("root") is None:  # harness.resolve_data_root: the task's synthetic set
            cfg["data"]["root"] = cfg["task"]["synthetic"]["root"]
        _CONFIGS[overrides] = cfg
    return copy.deepcopy(_CONFIGS[overrides])


def value(task: str, method: str, seed: int, lr: float | None = None) -> float:
    return BASE[task] + (0.05 if method == "cola" else 0.0) + (0.10 if lr else 0.0) + 0.02 * seed


def metrics_for(task: str, v: float, params: int) -> dict[str, float]:
    if task == "refcoco":
        m = {"testA/acc@0.5": v, "testB/acc@0.5": v - 0.02, "testA/miou": v - 0.1, "val/acc@0.5": v}
    elif task == "ave":
        m = {"test/acc": v, "val/acc": v}
    else:
        m = {"test/miou": v, "test/fscore": v - 0.05, "val/miou": v}
    return {**m, "params/trainable": params, "params/total": 10 * params, "time/train_s": 1.5}


def make_run(run_dir: Path, cfg: dict, metrics: dict | None, mtime: float | None = None) -> Path:
    """A run folder as train.py + Hydra leave it: .hydra/, config.yaml, metrics.json (unless it failed), wandb/."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))  # Hydra's copy: must not count as a run
    (run_dir / "wandb" / "offline-run-1" / "files").mkdir(parents=True)  # neither must W&B's
    (run_dir / "wandb" / "offline-run-1" / "files" / "config.yaml").write_text("seed: {value: 0}\n")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        if mtime is not None:
            os.utime(run_dir / "metrics.json", (mtime, mtime))
    return run_dir


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    """outputs/<task>/multiruns/<stamp>/<job>: lora and cola, seeds 0 and 1, for refcoco, ave, avs_s4 and avs_ms3;
    on refcoco also cola at lr_adapters=0.001, seed 0 of cola run a second time (newer), and a failed job."""
    root = tmp_path_factory.mktemp("outputs")
    for task in TASKS:
        sweep = root / task / "multiruns" / "2025-01-01_00-00-00"
        sweep.mkdir(parents=True)
        (sweep / "multirun.yaml").write_text("hydra: {}\n")
        job = 0
        for method in ("lora", "cola"):
            for seed in (0, 1):
                cfg = run_config(f"task={task}", f"peft={method}", f"seed={seed}")
                make_run(sweep / str(job), cfg, metrics_for(task, value(task, method, seed), PARAMS[method]), 1e9)
                job += 1
        if task == "refcoco":
            for seed in (0, 1):
                cfg = run_config(f"task={task}", "peft=cola", f"seed={seed}", "optim.lr_adapters=0.001")
                make_run(sweep / str(job), cfg, metrics_for(task, value(task, "cola", seed, 1e-3), 1500), 1e9)
                job += 1
            make_run(sweep / str(job), run_config(f"task={task}", "peft=cola", "seed=2"), None)  # failed
            (sweep / str(job + 1)).mkdir()  # failed before Hydra or train.py wrote anything
            # an eval.py folder: the evaluated run's config with an `eval` node, and its metrics
            cfg = {**run_config(f"task={task}", "peft=cola", "seed=0"), "eval": {"ckpt_path": str(sweep / "2")}}
            make_run(root / task / "evals" / "2025-01-03_00-00-00", cfg, metrics_for(task, 0.99, 1500))
            # seed 0 of cola again, later, in a single-run folder: the newer one counts, with another value
            cfg = run_config(f"task={task}", "peft=cola", "seed=0")
            again = root / task / "runs" / "2025-01-02_00-00-00"
            make_run(again, cfg, metrics_for(task, value(task, "cola", 0) + 0.01, 1500), 2e9)
    return root


def test_one_table_per_task_with_distinct_seeds_and_labels(mod, outputs):
    runs, skipped = mod.load_folder(outputs)
    assert len(runs) == 4 * 4 + 2 + 1
    tables = {t["title"]: t for t in mod.compare(runs)}
    assert sorted(tables) == [
        "ave",
        "avs_ms3",
        "avs_s4",
        "refcoco (data.dataset=refcoco, data.split_by=unc)",
    ]
    for title, t in tables.items():
        task = title.split()[0]
        assert t["metrics"] == [MAIN_METRIC[task]]  # each task its own main metric
        rows = {r["setting"]: r for r in t["rows"]}
        if task != "refcoco":
            assert list(rows) == ["lora", "cola"]  # rows labelled by the method only: nothing else varies
            assert all(r["seeds"] == 2 for r in rows.values())
            for method, r in rows.items():
                values = [value(task, method, s) for s in (0, 1)]
                assert r[f"{MAIN_METRIC[task]} mean"] == pytest.approx(statistics.fmean(values))
                assert r[f"{MAIN_METRIC[task]} std"] == pytest.approx(statistics.stdev(values))  # over seeds
                assert r["params/trainable"] == PARAMS[method]
            assert t["notes"] == []
    ref = tables["refcoco (data.dataset=refcoco, data.split_by=unc)"]
    rows = {r["setting"]: r for r in ref["rows"]}
    # the two cola learning rates are two rows, labelled by the key that differs
    assert list(rows) == ["lora lr_adapters=0.0002", "cola lr_adapters=0.0002", "cola lr_adapters=0.001"]
    # cola at the default 2e-4: seed 0 ran twice -> counted once, the newer run's value kept
    cola = rows["cola lr_adapters=0.0002"]
    assert cola["seeds"] == 2 and cola["seed list"] == "0 1"
    kept = [value("refcoco", "cola", 0) + 0.01, value("refcoco", "cola", 1)]
    assert cola["testA/acc@0.5 mean"] == pytest.approx(statistics.fmean(kept))
    assert cola["testA/acc@0.5 std"] == pytest.approx(statistics.stdev(kept))
    assert cola["testA/acc@0.5 gain vs lora"] == pytest.approx(statistics.fmean(kept) - 0.61)
    hi = rows["cola lr_adapters=0.001"]
    assert hi["seeds"] == 2 and hi["testA/acc@0.5 mean"] == pytest.approx(0.76)
    assert hi["testA/acc@0.5 gain vs lora"] == pytest.approx(0.76 - 0.61)  # the one LoRA row is the baseline
    (dup,) = ref["notes"]
    sweep = outputs / "refcoco" / "multiruns" / "2025-01-01_00-00-00"
    assert "seed 0 of `cola lr_adapters=0.0002` ran 2 times" in dup and "newest" in dup
    assert str(outputs / "refcoco" / "runs" / "2025-01-02_00-00-00") in dup and str(sweep / "2") in dup
    assert skipped == [
        (
            str(outputs / "refcoco" / "evals" / "2025-01-03_00-00-00"),
            f"an eval.py folder (of {sweep / '2'}), not a training run",
        ),
        (str(sweep / "6"), "no metrics.json: failed or unfinished"),
        (str(sweep / "7"), "no config.yaml or metrics.json: failed before training"),
    ]


def test_metric_missing_from_some_tasks_is_noted(script, outputs, tmp_path):
    assert script.main([str(outputs), "--metric", "test/miou", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert md.count("no run of this task has the metric test/miou") == 2  # refcoco (testA/miou only) and ave
    assert md.count("| setting | seeds | test/miou |") == 2  # avs_s4, avs_ms3
    assert sorted(p.name for p in tmp_path.glob("comparison_bar*.png")) == [
        "comparison_bar_avs_ms3.png",
        "comparison_bar_avs_s4.png",
    ]
    rows = list(csv.DictReader((tmp_path / "comparison.csv").open()))
    assert {r["task"] for r in rows} == {"avs_s4", "avs_ms3"}


def test_the_script_on_a_mixed_folder(outputs, tmp_path):
    """As a user runs it: the printed tables, warnings and skipped runs."""
    res = subprocess.run(
        [sys.executable, "scripts/compare_runs.py", str(outputs), "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    headings = [line for line in out.splitlines() if line.startswith("## ")]
    assert headings == [
        "## ave",
        "## avs_ms3",
        "## avs_s4",
        "## refcoco (data.dataset=refcoco, data.split_by=unc)",
        "## Skipped runs",
    ]
    ave = out.split("## ave")[1].split("## ")[0]
    assert "| setting | seeds | test/acc | Δ test/acc vs LoRA | trainable params |" in ave
    assert "| lora | 2 | 71.00 ± 1.41 | +0.00 | 1,000 |" in ave
    assert "| cola | 2 | 76.00 ± 1.41 | +5.00 | 1,500 |" in ave
    ref = out.split("## refcoco")[1].split("## ")[0]
    assert "| cola lr_adapters=0.0002 | 2 | 66.50 ± 0.71 | +5.50 | 1,500 |" in ref
    assert "| cola lr_adapters=0.001 | 2 | 76.00 ± 1.41 | +15.00 | 1,500 |" in ref
    assert "- warning: seed 0 of `cola lr_adapters=0.0002` ran 2 times: counted once" in ref
    skipped = out.split("## Skipped runs")[1]
    assert "/6: no metrics.json: failed or unfinished" in skipped and "/7: no config.yaml or metrics.json" in skipped
    assert "2025-01-03_00-00-00: an eval.py folder" in skipped
    assert "cola, seeds 4" not in out and "| cola | 4 |" not in out
    assert (tmp_path / "comparison.md").read_text() in out
    assert len(list(tmp_path.glob("comparison_*_*.png"))) == 2 * 4  # bar + params per task


def test_run_specific_keys_and_moved_checkout_do_not_split_groups(mod):
    a = run_config("task=ave", "peft=cola", "seed=0")
    b = run_config("task=ave", "peft=cola", "seed=1")
    assert a["run_name"] != b["run_name"] and "wandb" not in a["logger"]  # logger=csv: no W&B entry
    # seed 1 ran from another checkout, resumed, with another W&B project and tags
    b["paths"] = {
        "root_dir": "/elsewhere",
        "data_dir": "/elsewhere/data",
        "output_dir": "/elsewhere/outputs",
        "repo_dir": "/elsewhere",
    }
    b["data"]["root"] = "/elsewhere/data/synthetic_ave"
    b["task"]["synthetic"]["root"] = "/elsewhere/data/synthetic_ave"
    b["model"]["vision"]["checkpoint_path"] = "/elsewhere/assets/tiny_vit.safetensors"
    b["model"]["assets"][0]["path"] = "/elsewhere/assets/tiny_vit.safetensors"
    b["model"]["tokenizer"] = b["model"]["tokenizer"].replace(a["paths"]["repo_dir"], "/elsewhere")  # its .venv
    b.update(ckpt_path="last", tags=["rerun"], experiment_name="other")
    b["logger"] = {"csv": True, "wandb": {"project": "x", "name": "y", "tags": ["z"]}}
    assert mod.setting_of(a) == mod.setting_of(b)
    runs = [{"config": c, "metrics": {"test/acc": 0.5}, "path": str(i), "time": i} for i, c in enumerate((a, b))]
    (g,) = mod.group_runs(runs)
    assert len(g["members"]) == 2 and not g["mixed"]
    # another dataset root is another dataset
    b["data"]["root"] = "/datasets/AVE"
    assert len(mod.group_runs(runs)) == 2


class FakeRun:
    """What compare_runs reads of a ``wandb.apis.public.Run``."""

    def __init__(self, name, config, summary, state="finished"):
        self.url = f"https://wandb.ai/me/cola-refcoco/runs/{name}"
        self.config = {**config, "_wandb": {"cli_version": "0.17.0"}}
        self.summary = {**summary, "_timestamp": 1.7e9 + len(name), "_runtime": 3.0, "_step": 10}
        self.state = state
        self.created_at = "2025-01-01T00:00:00"


def wandb_runs() -> list[FakeRun]:
    runs = []
    for method in ("lora", "cola"):
        for seed in (0, 1, 2):
            cfg = run_config("task=refcoco", f"peft={method}", f"seed={seed}", "logger=wandb")
            if method == "cola" and seed == 2:
                del cfg["optim"]["decay_1d"]  # logged by an older version, before that key existed
            v = value("refcoco", method, seed)
            runs.append(FakeRun(f"{method}-{seed}", cfg, metrics_for("refcoco", v, PARAMS[method])))
    runs.append(FakeRun("cola-crashed", run_config("task=refcoco", "peft=cola", "seed=3"), {}, state="crashed"))
    return runs


def test_wandb_grouping_flags_a_mixed_group(mod):
    records = [mod.wandb_record(r) for r in wandb_runs() if r.state == "finished"]
    assert all("_wandb" not in r["config"] and "_timestamp" not in r["metrics"] for r in records)
    groups = {g["setting"]["peft.method"]: g for g in mod.group_runs(records)}
    assert sorted(groups) == ["cola", "lora"]
    assert not groups["lora"]["mixed"] and len(groups["lora"]["members"]) == 3
    cola = groups["cola"]
    assert len(cola["members"]) == 3
    assert list(cola["mixed"]) == ["optim.decay_1d"]
    assert cola["mixed"]["optim.decay_1d"]["<absent>"] == ["https://wandb.ai/me/cola-refcoco/runs/cola-2"]
    (table,) = mod.compare(records)
    rows = {r["setting"]: r for r in table["rows"]}
    assert list(rows) == ["lora", "cola *"] and rows["cola *"]["mixed"] == "optim.decay_1d"
    (note,) = table["notes"]
    assert note.startswith("warning: `cola *` groups runs whose configs differ in more than the seed: optim.decay_1d")
    # a run that differs in a key it has is never merged
    records[-1]["config"]["optim"]["lr_heads"] = 0.1
    assert len(mod.group_runs(records)) == 3


def test_wandb_source_end_to_end(script, monkeypatch, tmp_path, capsys):
    fake = wandb_runs()  # composed before the fake wandb module is in place (a resolver looks wandb up)
    api = types.SimpleNamespace(runs=lambda path, filters: fake)
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=lambda: api))
    assert script.main(["--wandb-project", "cola-refcoco", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## refcoco (data.dataset=refcoco, data.split_by=unc)" in out
    assert "| lora | 3 | 62.00 ± 2.00 |" in out and "| cola * | 3 | 67.00 ± 2.00 |" in out
    assert "- https://wandb.ai/me/cola-refcoco/runs/cola-crashed: state crashed" in out


def test_duplicate_seed_keeps_the_newest_whatever_the_order(mod):
    cfg = run_config("task=ave", "peft=lora", "seed=0")
    runs = [
        {"config": cfg, "metrics": {"test/acc": 0.9}, "path": "new", "time": 5.0, "time_of": "t"},
        {"config": cfg, "metrics": {"test/acc": 0.1}, "path": "old", "time": 1.0, "time_of": "t"},
    ]
    (g,) = mod.group_runs(runs)
    assert [r["path"] for r in g["members"]] == ["new"]
    assert [(s, k["path"], [d["path"] for d in ds]) for s, k, ds in g["duplicates"]] == [(0, "new", ["old"])]


def test_several_lora_rows_gain_against_the_matching_one(mod):
    runs = []
    for method in ("lora", "cola"):
        for rank in (4, 8):
            for seed in (0, 1):
                cfg = run_config("task=ave", f"peft={method}", f"peft.rank={rank}", f"seed={seed}")
                v = 0.5 + 0.1 * (method == "cola") + 0.01 * rank + 0.02 * seed
                runs.append({"config": cfg, "metrics": {"test/acc": v}, "path": f"{method}{rank}{seed}", "time": 0})
    (table,) = mod.compare(runs)
    rows = {r["setting"]: r for r in table["rows"]}
    assert list(rows) == ["lora rank=4", "lora rank=8", "cola rank=4", "cola rank=8"]
    assert all(r["seeds"] == 2 for r in rows.values())
    for rank in (4, 8):
        assert rows[f"cola rank={rank}"]["test/acc gain vs lora"] == pytest.approx(0.1)
        assert rows[f"lora rank={rank}"]["test/acc gain vs lora"] == pytest.approx(0.0)
