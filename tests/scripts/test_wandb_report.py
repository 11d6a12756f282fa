"""scripts/wandb_report.py: the experiment's W&B Report built offline with wandb-workspaces (panels, run-set filters,
titles), its --dry-run structure; and the summary values a W&B run logs for it (scores, floors, parameters, λ)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from cola import harness
from cola.lambdas import SUMMARY_KEY
from cola.wandb_report import build_report, experiment_spec, lambda_keys
from tests.conftest import fast_cfg, train_py

wr = pytest.importorskip("wandb_workspaces.reports.v2", reason="the `wandb-workspaces` package is not installed")

PROFILE = {
    "vision": {c: {0: 0.5, 1: 0.6, 10: 0.7} for c in ("q", "k", "v", "o", "fc1", "fc2")},
    "text": {"q": {0: 0.4}},
}


def test_experiment_spec_reads_the_experiment_file():
    spec = experiment_spec("ablation_rank")
    assert spec == {
        "task": "refcoco",
        "methods": ["lora", "cola"],
        "ranks": ["4", "8", "16", "32", "64"],
        "streams": ["vision", "text"],
        "group": "ablation_rank",
    }
    assert experiment_spec("main_ave")["methods"] == ["frozen", "lora", "lora_param_matched", "moka", "cola"]
    with pytest.raises(ValueError, match=r"no configs/experiment/nope.yaml; choices: ablation_intra, "):
        experiment_spec("nope")


def test_lambda_keys_are_per_module_in_depth_order():
    keys = lambda_keys(PROFILE)
    assert list(keys) == [f"vision.{c}" for c in ("q", "k", "v", "o", "fc1", "fc2")] + ["text.q"]
    assert keys["vision.k"] == ["lambda/vision.k/00", "lambda/vision.k/01", "lambda/vision.k/10"]


def _report(**kwargs):
    args = dict(
        entity="me",
        project="cola-refcoco",
        experiment="ablation_rank",
        methods=["lora", "cola"],
        metrics=["testA/acc@0.5", "testB/acc@0.5"],
        rank_sweep=True,
        lambdas=lambda_keys(PROFILE),
    )
    return build_report(**{**args, **kwargs})


def test_the_report_has_the_comparison_panels():
    report = _report()
    assert (report.entity, report.project, report.title) == ("me", "cola-refcoco", "ablation_rank: CoLA vs LoRA")
    kinds = [type(b).__name__ for b in report.blocks]
    assert kinds == ["H1", "P", "H2", "PanelGrid", "H2", "PanelGrid", "H2", "PanelGrid"]
    assert [b.text for b in report.blocks if type(b).__name__ == "H2"] == [
        "testA/acc@0.5",
        "testB/acc@0.5",
        "λ across depth per module (CoLA)",
    ]
    grid = report.blocks[3]
    (runset,) = grid.runsets
    # the experiment is the runs' W&B group, the methods their job type
    assert (runset.entity, runset.project) == ("me", "cola-refcoco")
    assert runset.filters == "Metric(\"Group\") == 'ablation_rank' and Metric(\"JobType\") in ['lora', 'cola']"
    bar, seeds, params, rank = grid.panels
    assert bar.title == "testA/acc@0.5 by method: mean ± std over seeds (floor: testA/acc@0.5_fixed_box)"
    assert [m.name for m in bar.metrics] == ["testA/acc@0.5", "testA/acc@0.5_fixed_box"]
    assert (bar.groupby, bar.groupby_aggfunc, bar.groupby_rangefunc) == ("JobType", "mean", "stddev")
    assert (seeds.title, seeds.x, seeds.y) == (
        "testA/acc@0.5 per seed",
        wr.Config("seed"),
        wr.SummaryMetric("testA/acc@0.5"),
    )
    assert (params.x, params.log_x) == (wr.SummaryMetric("params/trainable"), True)
    assert (rank.title, rank.x) == ("testA/acc@0.5 against the rank", wr.Config("peft.rank"))
    # what W&B receives for each panel (serialised offline: no run set, which would look the project up)
    bar_model = bar._to_model().config
    assert bar_model.metrics == ["summary_metrics.testA/acc@0.5", "summary_metrics.testA/acc@0.5_fixed_box"]
    assert bar_model.group_by == "jobType" and bar_model.chart_title == bar.title
    assert rank._to_model().config.x_axis == "config:peft.value.rank"
    assert params._to_model().config.x_axis == "summary:params/trainable"


def test_the_lambda_section_reads_cola_runs_per_module():
    grid = _report().blocks[-1]
    (runset,) = grid.runsets
    assert runset.filters == "Metric(\"Group\") == 'ablation_rank' and Metric(\"JobType\") in ['cola']"
    assert [p.title for p in grid.panels][:2] == [
        "λ across depth: vision.q (blocks in order, mean ± std over seeds)",
        "λ across depth: vision.k (blocks in order, mean ± std over seeds)",
    ]
    assert len(grid.panels) == 7
    assert [m.name for m in grid.panels[0].metrics] == [
        "lambda/vision.q/00",
        "lambda/vision.q/01",
        "lambda/vision.q/10",
    ]
    for panel in grid.panels:
        panel._to_model()


def test_the_lambda_section_reads_the_methods_whose_layers_learn_a_gate():
    """The λ runs are asked of the registry (:data:`cola.peft.GATED_METHODS`), never matched on a method's name."""
    from cola.peft import GATED_METHODS, METHODS
    from cola.wandb_report import gated

    assert gated(list(METHODS)) == list(GATED_METHODS) == ["cola"]
    assert gated(["lora", "moka", "vera", "not_registered"]) == []
    (runset,) = _report(methods=list(METHODS)).blocks[-1].runsets
    assert runset.filters == f'Metric("Group") == \'ablation_rank\' and Metric("JobType") in {list(GATED_METHODS)}'
    blocks = _report(methods=["lora", "moka", "vera"]).blocks
    assert [type(b).__name__ for b in blocks] == ["H1", "P", "H2", "PanelGrid", "H2", "PanelGrid"]  # no λ section


def test_without_a_rank_sweep_or_lambda_names_those_panels_are_left_out():
    report = _report(
        experiment="main_ave", methods=["lora", "cola"], metrics=["test/acc"], rank_sweep=False, lambdas={}
    )
    assert [type(b).__name__ for b in report.blocks] == ["H1", "P", "H2", "PanelGrid"]
    bar, *rest = report.blocks[-1].panels
    assert [m.name for m in bar.metrics] == ["test/acc", "test/acc_majority"] and len(rest) == 2


def test_the_script_dry_run_prints_the_structure(tmp_path):
    sweep = tmp_path / "sweep" / "0"
    sweep.mkdir(parents=True)
    (sweep / "lambda.json").write_text(json.dumps({"vision.blocks.0.attn.qkv": [0.5, 0.5, 0.5]}))
    args = ["--entity", "me", "--project", "cola-refcoco", "--experiment", "ablation_rank", "--dry-run"]
    res = train_py(*args, "--sweep", str(tmp_path / "sweep"), script="scripts/wandb_report.py", timeout=180)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("report: ablation_rank: CoLA vs LoRA\n  project: me/cola-refcoco\n")
    assert out.count("  panel grid:") == 4 and out.rstrip().endswith("dry run: nothing saved")
    assert "    BarPlot 'testA/acc@0.5 by method: mean ± std over seeds (floor: testA/acc@0.5_fixed_box)'" in out
    assert "ScatterPlot 'testB/acc@0.5 against the rank'; x config:peft.rank; y summary:testB/acc@0.5" in out
    assert (
        "BarPlot 'λ across depth: vision.k (blocks in order, mean ± std over seeds)'; metrics summary:lambda/vision.k/00"
        in out
    )
    bad = train_py(
        "--entity", "me", "--project", "p", "--experiment", "nope", "--dry-run", script="scripts/wandb_report.py"
    )
    assert bad.returncode == 2 and "error: --experiment nope: no configs/experiment/nope.yaml" in bad.stderr


def wandb_summary(run_file: Path) -> dict:
    """The summary a W&B offline run file (``run-<id>.wandb``: W&B's header, then LevelDB-log records of protobuf
    ``Record`` messages) holds at its end."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()[7:]  # ":W&B" + magic + version
    block, payloads, pending = 32768, [], b""
    pos = 0
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            payloads.append(pending)
    summary: dict = {}
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def test_a_wandb_run_logs_what_the_report_reads(synthetic_refcoco, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run_dir = tmp_path / "run"
    metrics = harness.train(fast_cfg(synthetic_refcoco, run_dir, "peft=cola", "logger=wandb"), run_dir)
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    (run_file,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    summary, t0 = wandb_summary(run_file), time.time()
    # W&B's service writes the file: on a busy machine it was once read incomplete right after wandb.finish()
    while "params/trainable" not in summary and time.time() - t0 < 60:
        time.sleep(1)
        summary = wandb_summary(run_file)
    for key in (
        "testA/acc@0.5",
        "testA/acc@0.5_fixed_box",
        "val/acc@0.5_fixed_box",
        "params/trainable",
        "params/total",
    ):
        assert summary[key] == pytest.approx(metrics[key]), key
    layers = json.loads((run_dir / "lambda.json").read_text())
    q, k, v = layers["vision.blocks.1.attn.qkv"]
    assert [summary[f"lambda/vision.{c}/01"] for c in "qkv"] == pytest.approx([q, k, v])
    assert summary["lambda/text.fc2/00"] == pytest.approx(layers["text.encoder.layer.0.output.dense"][0])
    per_layer = [k for k in summary if SUMMARY_KEY.match(k)]
    assert len(per_layer) == 2 * 2 * 6  # 2 towers x 2 blocks x 6 components
