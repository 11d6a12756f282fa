"""scripts/benchmark.py: the JSON report (README.md#performance) at tiny shapes, and what each measured model is."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"
METHODS = ["frozen", "lora", "peft_lora", "lora_param_matched", "cola", "moka"]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("cola_benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_benchmark()


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:  # one thread: no OpenMP barrier stalls when the test machine is busy
        bench.main(
            [
                *("--tiny", "--steps", "3", "--warmup", "1", "--threads", "1", "--batch", "1", "2"),
                *("--methods", *METHODS, "--json", str(path)),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text())


def test_report_has_the_spec_structure(report):
    """SPEC's {config, results, ratios} (ratios of the largest batch), plus the ratios and spreads by batch size."""
    assert set(report) == {"config", "results", "ratios", "ratios_by_batch", "spread_by_batch"}
    assert [(r["batch"], r["method"]) for r in report["results"]] == [(b, m) for b in (1, 2) for m in METHODS]
    for r in report["results"]:
        assert set(r) == {
            *("method", "batch", "train_step_ms", "eval_ms", "peak_mem_mb", "params_trainable"),
            *("train_step_ms_iqr", "eval_ms_iqr"),
        }
        assert isinstance(r["params_trainable"], int)
        for key in ("train_step_ms", "eval_ms", "peak_mem_mb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["method"], key)
        for key in ("train_step_ms", "eval_ms"):  # the median lies inside its interquartile range
            lo, hi = r[f"{key}_iqr"]
            assert lo <= r[key] <= hi
    cfg = report["config"]
    assert cfg["tiny"] is True and cfg["steps"] == 3 and cfg["methods"] == METHODS and cfg["batch"] == [1, 2]
    for key in ("cpu_count", "torch", "device_name"):
        assert cfg["machine"][key]
    for b in ("1", "2"):
        for m in METHODS:  # the medians come from exactly --steps timed samples per method and batch size
            assert len(cfg["step_times_ms"][b][m]["train"]) == 3 and len(cfg["step_times_ms"][b][m]["eval"]) == 3


def test_ratios_are_finite_and_match_the_results(report):
    assert report["ratios"] == report["ratios_by_batch"]["2"]  # top level: the largest batch size
    for batch in (1, 2):
        ratios = report["ratios_by_batch"][str(batch)]
        assert set(ratios) == {"cola/lora", "moka/lora", "lora/peft_lora", "cola/lora_param_matched"}
        by = {r["method"]: r for r in report["results"] if r["batch"] == batch}
        for name, ratio in ratios.items():
            num, den = name.split("/")
            assert set(ratio) == {"train_step", "eval", "peak_mem"}
            for key, field in (("train_step", "train_step_ms"), ("eval", "eval_ms"), ("peak_mem", "peak_mem_mb")):
                assert math.isfinite(ratio[key]) and ratio[key] > 0
                assert ratio[key] == pytest.approx(by[num][field] / by[den][field], rel=1e-3)


def test_paired_spreads_come_from_the_same_rounds(report):
    """spread_by_batch: [p25, median, p75] of sample i of the numerator over sample i of the denominator."""
    times = report["config"]["step_times_ms"]["1"]
    spread = report["spread_by_batch"]["1"]["cola/lora"]
    for key, kind in (("train_step", "train"), ("eval", "eval")):
        per_round = sorted(a / b for a, b in zip(times["cola"][kind], times["lora"][kind], strict=True))
        assert spread[key][0] <= spread[key][1] <= spread[key][2]
        assert spread[key][1] == pytest.approx(per_round[1], rel=1e-3)  # median of 3 paired ratios


def test_plot_of_ratios_against_batch_size(report, bench, tmp_path):
    png = bench.plot_ratios(report, tmp_path / "ratios.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_time_interleaved_rotates_methods_and_batch_sizes(bench):
    """Every round runs each batch size and each method once; who goes first rotates."""
    calls = []

    class Fake:
        def __init__(self, method):
            self.method, self.batch = method, None

        def set_batch(self, b):
            self.batch = b

        def train_step(self):
            calls.append((self.batch, self.method))

        def timed(self, step):
            step()
            return 1.0

    times = bench.time_interleaved([Fake("a"), Fake("b")], "train", steps=2, warmup=1, batches=[1, 4])
    assert times == {1: {"a": [1.0, 1.0], "b": [1.0, 1.0]}, 4: {"a": [1.0, 1.0], "b": [1.0, 1.0]}}
    warm, rounds = calls[:4], calls[4:]
    assert warm == [(1, "a"), (1, "b"), (4, "a"), (4, "b")]
    assert rounds == [(1, "a"), (1, "b"), (4, "a"), (4, "b"), (4, "b"), (4, "a"), (1, "b"), (1, "a")]


def test_trainable_parameters(report):
    by = {r["method"]: r["params_trainable"] for r in report["results"]}
    head = (192 + 192) * 16 + 16  # Linear(C_a + C_b, HEAD_DIM) of the tiny towers
    assert by["frozen"] == head
    assert by["lora"] == by["peft_lora"]  # split_fused=False: the same A/B shapes as HF peft on fused qkv
    assert head < by["lora"] < by["moka"] < by["cola"]
    # the param-matched LoRA's rank brings its count within one rank step of CoLA's
    assert abs(by["lora_param_matched"] - by["cola"]) < by["lora"] / 8


def test_cola_sharing_variants_drop_their_shared_matrices(bench):
    args = bench.parse_args(["--tiny"])
    spec = bench.pair_spec("vl", tiny=True)
    n = {m: bench.trainable_params(bench.build_model(m, spec, args, torch.device("cpu"))) for m in bench.COLA_SHARING}
    assert n["cola_full"] < n["cola_shared_a"] == n["cola_shared_b"] < n["cola"]  # A and B are equally large


def test_eval_merges_ours_and_peft_lora_without_changing_outputs(bench):
    args = bench.parse_args(["--tiny", "--batch", "2"])
    spec = bench.pair_spec("vl", tiny=True)
    for method in ("lora", "peft_lora", "cola"):
        runner = bench.Runner(method, spec, args, torch.device("cpu"))
        with torch.no_grad():  # non-zero B so that merging matters
            for name, p in runner.model.named_parameters():
                if "lora_B" in name or "cola_B" in name:
                    p.normal_(std=0.02)
        runner.model.eval()
        with torch.no_grad():
            before = runner.model(runner.inputs)
        weight = runner.model.encoder.towers["vision"].model.blocks[0].mlp.fc1.base_layer.weight.clone()
        runner.prepare_eval()
        changed = not torch.equal(
            runner.model.encoder.towers["vision"].model.blocks[0].mlp.fc1.base_layer.weight, weight
        )
        assert changed, f"{method}: eval ran unmerged"
        with torch.no_grad():
            after = runner.model(runner.inputs)
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_av_pair_builds_ast_with_its_targets(bench):
    args = bench.parse_args(["--tiny", "--pair", "av", "--batch", "2"])
    spec = bench.pair_spec("av", tiny=True)
    runner = bench.Runner("cola", spec, args, torch.device("cpu"))
    assert runner.inputs["audio"]["input_values"].shape == (2, 100, 128)
    report = runner.model.encoder.report
    assert all(n == 4 for n in report.towers["audio"].per_target.values())  # every AST target in each of the 4 layers
    runner.train_step()
    assert all(torch.isfinite(p.grad).all() for p in runner.model.parameters() if p.grad is not None)


def test_compute_ratios_skips_missing_methods(bench):
    results = [
        {"method": "lora", "train_step_ms": 2.0, "eval_ms": 1.0, "peak_mem_mb": 4.0, "params_trainable": 1},
        {"method": "cola", "train_step_ms": 3.0, "eval_ms": 1.5, "peak_mem_mb": None, "params_trainable": 2},
    ]
    assert bench.compute_ratios(results) == {"cola/lora": {"train_step": 1.5, "eval": 1.5, "peak_mem": None}}


def test_bad_arguments_are_named(bench):
    with pytest.raises(ValueError, match="--steps"):
        bench.parse_args(["--steps", "0"])
    with pytest.raises(ValueError, match="--batch"):
        bench.parse_args(["--batch", "4", "0"])
    with pytest.raises(SystemExit):  # argparse rejects an unknown method with the list of choices
        bench.parse_args(["--methods", "no_such_method"])
    assert bench.parse_args(["--batch", "8", "1", "4", "1"]).batch == [1, 4, 8]  # sorted, duplicates dropped


def test_default_methods(bench):
    assert bench.parse_args(["--tiny"]).methods == ["frozen", "lora", "peft_lora", "cola", "moka"]  # under a minute
    assert bench.parse_args([]).methods == list(bench.METHODS)
    assert bench.parse_args(["--tiny", "--methods", "cola", "lora", "cola"]).methods == ["cola", "lora"]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_dtypes_train_and_keep_fp32_weights(bench, dtype):
    """--dtype bf16 / fp16 run the train step under autocast (fp16 through a GradScaler) with fp32 weights."""
    args = bench.parse_args(["--tiny", "--dtype", dtype, "--methods", "cola"])
    spec = bench.pair_spec(args.pair, tiny=True)
    runner = bench.Runner("cola", spec, args, torch.device("cpu"))
    assert (runner.scaler is not None) == (dtype == "fp16")
    scaler_calls = []
    if runner.scaler is not None:
        for name in ("scale", "step", "update"):
            real = getattr(runner.scaler, name)
            setattr(runner.scaler, name, lambda *a, _real=real, _name=name: scaler_calls.append(_name) or _real(*a))
    before = {n: p.detach().clone() for n, p in runner.model.named_parameters() if p.requires_grad}
    runner.train_step()
    after = dict(runner.model.named_parameters())
    assert all(after[n].dtype == torch.float32 for n in before)
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the optimiser stepped
    if runner.scaler is not None:
        # fp16: the loss went through the scaler, which found finite gradients and stepped (a skipped step leaves the
        # weights as they were and halves the scale from its initial 2**16)
        assert scaler_calls == ["scale", "step", "update"] and runner.scaler.get_scale() == 2.0**16


def test_intra_variant_methods(bench):
    """dora / rslora / pissa / adalora are our LoRA with that intra path; cola_<v> is CoLA over it (DoRA adds one
    magnitude per output row of every adapted layer, AdaLoRA one singular value per rank, the others no parameter)."""
    args = bench.parse_args(["--tiny", "--batch", "1", "--methods", "lora"])
    spec = bench.pair_spec("vl", tiny=True)
    n = {m: bench.Runner(m, spec, args, torch.device("cpu")).params_trainable for m in ("lora", "cola", *bench.INTRA)}
    n.update(
        {f"cola_{v}": bench.Runner(f"cola_{v}", spec, args, torch.device("cpu")).params_trainable for v in ("dora",)}
    )
    assert n["rslora"] == n["pissa"] == n["lora"]
    magnitudes = n["dora"] - n["lora"]
    assert magnitudes == 4 * (3 * 192 + 192 + 4 * 192 + 192) + 4 * (3 * 192 + 192 + 768 + 192)  # d_out per layer
    assert n["cola_dora"] - n["cola"] == magnitudes
    assert {"dora/lora", "cola_dora/dora", "cola_dora/lora"} <= {f"{a}/{b}" for a, b in bench.RATIO_PAIRS}
    # AdaLoRA adds one singular value per triplet: rank 8 x 40 matrices (ViT 4 x qkv, proj, fc1, fc2 with one A/B on
    # qkv as the lora row; BERT 4 x q, k, v, o, intermediate, output)
    assert n["adalora"] - n["lora"] == 8 * (4 * 4 + 4 * 6)
    assert {"adalora/lora", "cola_adalora/adalora", "cola_adalora/lora"} <= {f"{a}/{b}" for a, b in bench.RATIO_PAIRS}
