"""cola.bench (scripts/benchmark.py): the JSON report (README.md#performance) at tiny shapes, what each measured model
is, the FLOP counts against their arithmetic, and the table's loaded-machine flag."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cola import bench
from cola.bench import BenchConfig, Runner, count_flops, pair_spec

METHODS = ["frozen", "lora", "peft_lora", "lora_param_matched", "cola", "moka"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:  # one thread: no OpenMP barrier stalls when the test machine is busy
        bench.run(
            BenchConfig(tiny=True, steps=3, warmup=1, threads=1, batch=[1, 2], methods=METHODS, json=path),
        )
    finally:
        torch.set_num_threads(threads)
    return json.loads(path.read_text())


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_report_has_the_documented_structure(report):
    """{config, results, ratios} (ratios of the largest batch), the ratios and spreads by batch size, the FLOP counts
    and their ratios, and the memory account."""
    assert set(report) == {
        *("config", "results", "ratios", "ratios_by_batch", "spread_by_batch"),
        *("flops", "flops_by_batch", "flop_ratios", "flop_ratios_by_batch", "memory", "memory_by_batch"),
    }
    assert [(r["batch"], r["method"]) for r in report["results"]] == [(b, m) for b in (1, 2) for m in METHODS]
    for r in report["results"]:
        assert set(r) == {
            *("method", "batch", "train_step_ms", "eval_ms", "peak_mem_mb", "params_trainable"),
            *("train_step_ms_iqr", "eval_ms_iqr", "train_flops", "eval_flops"),
        }
        assert isinstance(r["params_trainable"], int)
        for key in ("train_step_ms", "eval_ms", "peak_mem_mb"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, (r["method"], key)
        for key in ("train_step_ms", "eval_ms"):  # the median lies inside its interquartile range
            lo, hi = r[f"{key}_iqr"]
            assert lo <= r[key] <= hi
        assert report["flops_by_batch"][str(r["batch"])][r["method"]] == {
            "train": r["train_flops"],
            "eval": r["eval_flops"],
        }
    cfg = report["config"]
    assert cfg["tiny"] is True and cfg["steps"] == 3 and cfg["methods"] == METHODS and cfg["batch"] == [1, 2]
    for key in ("cpu_count", "torch", "device_name"):
        assert cfg["machine"][key]
    assert isinstance(cfg["machine"]["loaded"], bool) and len(cfg["machine"]["load_samples"]) == 2 * 3
    assert cfg["hydra_overrides"]["cola"][-5:] == [
        "peft=cola",
        "rank=8",
        "peft.alpha=4.0",
        "peft.dropout=0.0",
        "peft.sharing=none",
    ]
    for b in ("1", "2"):
        for m in METHODS:  # the medians come from exactly --steps timed samples per method and batch size
            assert len(cfg["step_times_ms"][b][m]["train"]) == 3 and len(cfg["step_times_ms"][b][m]["eval"]) == 3


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_ratios_are_finite_and_match_the_results(report):
    assert report["ratios"] == report["ratios_by_batch"]["2"]  # top level: the largest batch size
    assert report["flop_ratios"] == report["flop_ratios_by_batch"]["2"]
    assert report["flops"] == report["flops_by_batch"]["2"]
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
            # beside every time ratio: the FLOP ratio of the same pair and the overhead above it
            floor = report["flop_ratios_by_batch"][str(batch)][name]
            for key, flops in (("train_step", "train_flops"), ("eval", "eval_flops")):
                assert floor[key] == pytest.approx(by[num][flops] / by[den][flops], rel=1e-3)
                assert floor[f"{key}_overhead"] == pytest.approx(ratio[key] / floor[key], rel=1e-3)


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_flop_counts_follow_the_methods(report):
    """Training counts the backward (more than eval); merged LoRAs evaluate at the frozen model's FLOPs; CoLA's
    unmergeable inter path and MokA's cross term add eval work; FLOPs grow linearly with the batch."""
    f1, f2 = report["flops_by_batch"]["1"], report["flops_by_batch"]["2"]
    for m in METHODS:
        assert f1[m]["train"] > f1[m]["eval"] > 0
        assert f2[m]["eval"] == pytest.approx(2 * f1[m]["eval"], rel=0.02)
    assert f1["lora"]["eval"] == f1["peft_lora"]["eval"] == f1["lora_param_matched"]["eval"] == f1["frozen"]["eval"]
    assert f1["lora"]["train"] == f1["peft_lora"]["train"]  # the same arithmetic in two implementations
    assert f1["cola"]["eval"] > f1["lora"]["eval"] and f1["moka"]["eval"] > f1["lora"]["eval"]
    assert f1["frozen"]["train"] < f1["lora"]["train"] < f1["cola"]["train"]


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_memory_account_names_the_hypernetworks_optimizer_state(report):
    by = {r["method"]: r for r in report["results"] if r["batch"] == 2}
    account = report["memory"]
    extra = by["cola"]["params_trainable"] - by["lora"]["params_trainable"]
    assert account["extra_params"] == extra
    assert account["extra_adamw_state_mb"] == pytest.approx(extra * 12 / 2**20, abs=0.05)  # grad + 2 moments, fp32
    assert account["cola/lora_param_matched"] == report["ratios"]["cola/lora_param_matched"]["peak_mem"]
    text = bench.render_tables(report)
    assert "AdamW moments" in text and "lora_param_matched, the fair comparison" in text


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_paired_spreads_come_from_the_same_rounds(report):
    """spread_by_batch: [p25, median, p75] of sample i of the numerator over sample i of the denominator."""
    times = report["config"]["step_times_ms"]["1"]
    spread = report["spread_by_batch"]["1"]["cola/lora"]
    for key, kind in (("train_step", "train"), ("eval", "eval")):
        per_round = sorted(a / b for a, b in zip(times["cola"][kind], times["lora"][kind], strict=True))
        assert spread[key][0] <= spread[key][1] <= spread[key][2]
        assert spread[key][1] == pytest.approx(per_round[1], rel=1e-3)  # median of 3 paired ratios


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_table_says_when_the_machine_was_loaded(report):
    """The loaded flag is in the tables themselves (title and a column), not only in the log."""
    quiet = json.loads(json.dumps(report))
    quiet["config"]["machine"].update(loaded=False)
    loaded = json.loads(json.dumps(report))
    loaded["config"]["machine"].update(loaded=True, load_average_start=5.2, competing_load=3.1)
    text = bench.render_tables(loaded)
    assert text.splitlines()[0].startswith("LOADED MACHINE: load average 5.2 at start, other processes' load 3.1")
    assert "not to be trusted" in text.splitlines()[0]
    assert text.count("| LOADED MACHINE: not to be trusted") == 3  # batch 1, batch 2, ratios
    assert "no (loaded)" in text and "trusted" in text
    clean = bench.render_tables(quiet)
    assert "LOADED" not in clean and "no (loaded)" not in clean
    assert "train FLOP" in clean and "overhead" in clean and "[p25-p75]" in clean


def test_loaded_rule():
    """Loaded when the load before the run, or the others' load while it ran, exceeds the cores we left free."""
    assert bench.competing_load([3.0, 5.0, 4.0], threads=1) == 3.0  # median 4.0 minus our thread
    assert bench.competing_load([0.5], threads=2) == 0.0
    assert not bench.is_loaded(0.4, 0.0, cpus=2, threads=1)
    assert bench.is_loaded(1.6, 0.0, cpus=2, threads=1)
    assert bench.is_loaded(0.0, 1.6, cpus=2, threads=1)
    assert not bench.is_loaded(10.0, 10.0, cpus=64, threads=8)


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_plot_of_ratios_against_batch_size(report, tmp_path):
    png = bench.plot_ratios(report, tmp_path / "ratios.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_time_interleaved_rotates_methods_and_batch_sizes():
    """Every round runs each batch size and each method once; who goes first rotates."""
    calls, rounds_seen = [], []

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

    times = bench.time_interleaved(
        [Fake("a"), Fake("b")], "train", steps=2, warmup=1, batches=[1, 4], on_round=lambda: rounds_seen.append(1)
    )
    assert times == {1: {"a": [1.0, 1.0], "b": [1.0, 1.0]}, 4: {"a": [1.0, 1.0], "b": [1.0, 1.0]}}
    warm, rounds = calls[:4], calls[4:]
    assert warm == [(1, "a"), (1, "b"), (4, "a"), (4, "b")]
    assert rounds == [(1, "a"), (1, "b"), (4, "a"), (4, "b"), (4, "b"), (4, "a"), (1, "b"), (1, "a")]
    assert len(rounds_seen) == 2  # the load sampler runs after every timed round


@pytest.mark.ci  # the shared report takes ~2 min to measure: `make test-ci`
def test_trainable_parameters(report):
    by = {r["method"]: r["params_trainable"] for r in report["results"]}
    head = (192 + 192) * 16 + 16  # Linear(C_a + C_b, HEAD_DIM) of the tiny towers
    assert by["frozen"] == head
    assert by["lora"] == by["peft_lora"]  # split_fused=False: the same A/B shapes as HF peft on fused qkv
    assert head < by["lora"] < by["moka"] < by["cola"]
    # the param-matched LoRA's rank brings its count within one rank step of CoLA's
    assert abs(by["lora_param_matched"] - by["cola"]) < by["lora"] / 8


def test_methods_come_from_the_registry():
    """Every registry method but full fine-tuning, expanded by HF peft's LoRA, CoLA's sharings and the intra variants;
    each composes to the peft config the registry parses."""
    from cola.peft import INTRA_VARIANTS, SHARING_CHOICES
    from cola.peft import METHODS as REGISTRY
    from cola.validation import parse_peft

    assert {m for m in REGISTRY if m != "full"} <= set(bench.METHODS)
    assert "full" not in bench.METHODS and bench.METHODS[0] == "frozen"
    assert {f"cola_{s}" for s in SHARING_CHOICES if s != "none"} <= set(bench.METHODS)
    assert {v for v in INTRA_VARIANTS if v != "lora"} | {f"cola_{v}" for v in INTRA_VARIANTS if v != "lora"} <= set(
        bench.METHODS
    )
    pair = pair_spec("vl", tiny=True)
    cfg = BenchConfig(tiny=True)
    expect = {"cola_shared_b": ("cola", "shared_b"), "dora": ("lora", None), "peft_lora": ("frozen", None)}
    for method, (name, sharing) in expect.items():
        spec = parse_peft(bench.models.compose_config(method, pair, cfg))
        assert spec.method.name == name
        if sharing:
            assert spec.config.sharing == sharing
    assert parse_peft(bench.models.compose_config("dora", pair, cfg)).config.intra == "dora"
    lora = parse_peft(bench.models.compose_config("lora", pair, cfg)).config
    assert (lora.rank, lora.alpha, lora.dropout, lora.split_fused) == (8, 4.0, 0.0, False)


def test_every_registry_method_has_a_row_composed_from_the_registry():
    """Adding a registry method needs no edit in cola.bench: its row composes ``peft=<name>`` (VeRA, one registry
    line, runs); the floor, the sharing rows, the layout flag and the derived LoRA are asked of the registry."""
    from cola.peft import METHODS as REGISTRY
    from cola.validation import parse_peft

    pair = pair_spec("vl", tiny=True)
    cfg = BenchConfig(tiny=True, lora_split_fused=True)
    for name, row in bench.ROWS.items():
        spec = parse_peft(bench.models.compose_config(name, pair, cfg))
        assert spec.method is REGISTRY[row.peft], name
        if row.sharing is not None:
            assert spec.config.sharing == row.sharing
        if spec.config is not None:
            assert spec.config.intra == (row.intra or "lora")
        if row.fused_layout:  # --lora-split-fused reaches every row whose own layers have the layout (not the derived)
            assert spec.config.split_fused is True
    assert [m for m, row in bench.ROWS.items() if row.fused_layout] == ["lora", *bench.INTRA]
    assert (bench.FLOOR, bench.MATCHED, bench.HF_PEFT) == ("frozen", "lora_param_matched", "peft_lora")
    assert bench.SHARING_ROWS == {
        "cola": "none",
        "cola_shared_a": "shared_a",
        "cola_shared_b": "shared_b",
        "cola_full": "full",
    }
    assert ("vera", "lora") in bench.RATIO_PAIRS and ("moka", "lora") in bench.RATIO_PAIRS
    assert len(set(bench.RATIO_PAIRS)) == len(bench.RATIO_PAIRS)
    assert all(a in bench.ROWS and b in bench.ROWS for a, b in bench.RATIO_PAIRS)
    vera = Runner("vera", pair, BenchConfig(tiny=True, batch=[1], methods=["vera"]), CPU)
    vera.train_step()
    assert vera.params_trainable > Runner("frozen", pair, BenchConfig(tiny=True, batch=[1]), CPU).params_trainable


def test_cola_sharing_variants_drop_their_shared_matrices():
    cfg = BenchConfig(tiny=True)
    pair = pair_spec("vl", tiny=True)
    n = {m: bench.trainable_params(bench.build_model(m, pair, cfg, CPU)) for m in bench.SHARING_ROWS}
    assert n["cola_full"] < n["cola_shared_a"] == n["cola_shared_b"] < n["cola"]  # A and B are equally large


def test_eval_merges_ours_and_peft_lora_without_changing_outputs():
    cfg = BenchConfig(tiny=True, batch=[2])
    pair = pair_spec("vl", tiny=True)
    for method in ("lora", "peft_lora", "cola"):
        runner = Runner(method, pair, cfg, CPU)
        with torch.no_grad():  # non-zero B so that merging matters
            for name, p in runner.model.named_parameters():
                if "lora_B" in name or "cola_B" in name:
                    p.normal_(std=0.02)
        runner.model.eval()
        with torch.no_grad():
            before = runner.model(runner.inputs)
        fc1 = runner.model.encoder.towers["vision"].model.blocks[0].mlp.fc1
        weight = fc1.base_layer.weight.clone()
        runner.prepare_eval()
        assert not torch.equal(fc1.base_layer.weight, weight), f"{method}: eval ran unmerged"
        with torch.no_grad():
            after = runner.model(runner.inputs)
        torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_av_pair_builds_ast_with_its_targets():
    cfg = BenchConfig(tiny=True, pair="av", batch=[2])
    runner = Runner("cola", pair_spec("av", tiny=True), cfg, CPU)
    assert runner.inputs["audio"]["input_values"].shape == (2, 100, 128)
    report = runner.model.encoder.report
    assert all(n == 4 for n in report.towers["audio"].per_target.values())  # every AST target in each of the 4 layers
    runner.train_step()
    assert all(torch.isfinite(p.grad).all() for p in runner.model.parameters() if p.grad is not None)


def test_compute_ratios_skips_missing_methods():
    results = [
        {"method": "lora", "train_step_ms": 2.0, "eval_ms": 1.0, "peak_mem_mb": 4.0, "params_trainable": 1},
        {"method": "cola", "train_step_ms": 3.0, "eval_ms": 1.5, "peak_mem_mb": None, "params_trainable": 2},
    ]
    ratios = bench.compute_ratios(results)
    assert ratios == {"cola/lora": {"train_step": 1.5, "eval": 1.5, "peak_mem": None}}
    flops = {"lora": {"train": 100, "eval": 40}, "cola": {"train": 120, "eval": 60}}
    assert bench.compute_flop_ratios(flops, ratios) == {
        "cola/lora": {"train_step": 1.2, "train_step_overhead": 1.25, "eval": 1.5, "eval_overhead": 1.0}
    }


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="--steps"):
        BenchConfig(steps=0)
    with pytest.raises(ValueError, match="--batch"):
        BenchConfig(batch=[4, 0])
    with pytest.raises(ValueError, match=r"--methods must be among \[.*'cola'.*\], got \['no_such_method'\]"):
        BenchConfig(methods=["no_such_method"])
    with pytest.raises(ValueError, match=r"--dtype must be one of \['fp32', 'bf16', 'fp16'\], got 'fp64'"):
        BenchConfig(dtype="fp64")
    assert BenchConfig(batch=[8, 1, 4, 1]).batch == [1, 4, 8]  # sorted, duplicates dropped


def test_default_methods():
    assert BenchConfig(tiny=True).methods == list(bench.REPORTED_METHODS)  # about a minute
    assert BenchConfig().methods == list(bench.METHODS)
    assert BenchConfig(tiny=True, methods=["cola", "lora", "cola"]).methods == ["cola", "lora"]
    assert BenchConfig().alpha == 4.0 and BenchConfig(rank=16).alpha == 8.0


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_dtypes_train_and_keep_fp32_weights(dtype):
    """--dtype bf16 / fp16 run the train step under autocast (fp16 through a GradScaler) with fp32 weights."""
    cfg = BenchConfig(tiny=True, dtype=dtype, methods=["cola"])
    runner = Runner("cola", pair_spec(cfg.pair, tiny=True), cfg, CPU)
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


def test_intra_variant_methods():
    """dora / rslora / pissa / adalora are our LoRA with that intra path; cola_<v> is CoLA over it (DoRA adds one
    magnitude per output row of every adapted layer, AdaLoRA one singular value per rank, the others no parameter)."""
    cfg = BenchConfig(tiny=True, batch=[1], methods=["lora"])
    pair = pair_spec("vl", tiny=True)
    n = {m: Runner(m, pair, cfg, CPU).params_trainable for m in ("lora", "cola", "cola_dora", *bench.INTRA)}
    assert n["rslora"] == n["pissa"] == n["lora"]
    magnitudes = n["dora"] - n["lora"]
    assert magnitudes == 4 * (3 * 192 + 192 + 4 * 192 + 192) + 4 * (3 * 192 + 192 + 768 + 192)  # d_out per layer
    assert n["cola_dora"] - n["cola"] == magnitudes
    pairs = {f"{a}/{b}" for a, b in bench.RATIO_PAIRS}
    assert {"dora/lora", "cola_dora/dora", "cola_dora/lora"} <= pairs
    # AdaLoRA adds one singular value per triplet: rank 8 x 40 matrices (ViT 4 x qkv, proj, fc1, fc2 with one A/B on
    # qkv as the lora row; BERT 4 x q, k, v, o, intermediate, output)
    assert n["adalora"] - n["lora"] == 8 * (4 * 4 + 4 * 6)
    assert {"adalora/lora", "cola_adalora/adalora", "cola_adalora/lora"} <= pairs


# ----------------------------------------------------------------------------------------------------- FLOP arithmetic
# One adapted linear W0 (d_out x d_in) on N = B T tokens; FLOPs count a multiply and an add (2 per MAC), as
# FlopCounterMode does. A low-rank path of rank r costs 2 N r (d_in + d_out) forward; its backward the same again for
# the weight gradients (A and B) and again for the gradients of its activations (to z from the up-projection, to x
# from the down-projection when x needs one).
B, T, D_IN, D_OUT, R, D_C, REDUCTION = 2, 5, 24, 40, 4, 32, 16
N, HIDDEN = B * T, D_C // REDUCTION


def _layer(kind: str) -> nn.Module:
    from cola.peft import CoLAConfig, CoLALinear, LoRAConfig, LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(D_IN, D_OUT)
    base.requires_grad_(False)
    if kind == "lora":
        return LoRALinear.build(base, LoRAConfig(rank=R, alpha=R), context_dim=None, out_splits=1)
    layer = CoLALinear.build(base, CoLAConfig(rank=R, alpha=R, reduction=REDUCTION), context_dim=D_C, out_splits=1)
    layer.set_condition(torch.randn(B, D_C))
    return layer


def _train_flops(layer: nn.Module) -> int:
    x = torch.randn(B, T, D_IN, requires_grad=True)
    return count_flops(lambda: layer(x).sum().backward())


def _eval_flops(layer: nn.Module) -> int:
    from cola.peft import merge_adapters

    merge_adapters(layer)
    layer.eval()
    x = torch.randn(B, T, D_IN)
    with torch.no_grad():
        return count_flops(lambda: layer(x))


def path(n: int, d_in: int, d_out: int, rank: int) -> int:
    """Forward FLOPs of one low-rank path x -> x A^T -> z B^T (the formula of the brief: 2 B T r (d_in + d_out))."""
    return 2 * n * rank * (d_in + d_out)


def hypernet(b: int, d_c: int, hidden: int, rank: int) -> int:
    """Forward FLOPs of Phi: fc1 (d_c -> hidden) and fc2 (hidden -> r^2) on b conditions."""
    return 2 * b * hidden * (d_c + rank * rank)


def test_lora_layer_flops_are_the_arithmetic():
    base = 2 * N * D_IN * D_OUT
    # forward: W0 x and the path; backward: the input gradient through W0 (frozen: no weight gradient), and the path
    # three times over (weight gradients of A and B, the activation gradients to z and x)
    assert _train_flops(_layer("lora")) == 2 * base + 3 * path(N, D_IN, D_OUT, R)
    assert _eval_flops(_layer("lora")) == base  # merged: the frozen layer's cost


def test_cola_layer_flops_are_the_arithmetic():
    base = 2 * N * D_IN * D_OUT
    core = 2 * N * R * R  # t = z_C Phi^T per token
    phi = hypernet(B, D_C, HIDDEN, R)
    # two low-rank paths (intra and inter) and the r x r core, each forward + 2x backward; Phi forward, its weight
    # gradients and the gradient to fc1's output through fc2 (the condition itself needs no gradient here)
    phi_train = 2 * phi + 2 * B * HIDDEN * R * R
    assert _train_flops(_layer("cola")) == 2 * base + 3 * 2 * path(N, D_IN, D_OUT, R) + 3 * core + phi_train
    # merged: the intra path folds into W0, the inter path (down, core, up) and Phi still run
    assert _eval_flops(_layer("cola")) == base + path(N, D_IN, D_OUT, R) + core + phi


def test_cola_over_lora_flop_ratio_of_the_tiny_model_is_the_arithmetic():
    """Eval: CoLA's FLOPs above LoRA's (both merged) are exactly the inter paths, cores and hypernetworks of its
    adapted layers, at the token counts each layer saw. Train: the ratio lies in the range the arithmetic gives."""
    from cola.peft import CoLALinear

    cfg = BenchConfig(tiny=True, batch=[2], methods=["lora", "cola"])
    pair = pair_spec("vl", tiny=True)
    runners = {m: Runner(m, pair, cfg, CPU) for m in ("lora", "cola")}
    rank = cfg.rank
    shapes = []
    layers = [m for m in runners["cola"].model.modules() if isinstance(m, CoLALinear)]
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.append((mod, args[0].shape))) for m in layers]
    train = {m: r.train_flops(2) for m, r in runners.items()}
    for r in runners.values():
        r.prepare_eval()
    shapes.clear()
    evals = {m: r.eval_flops(2) for m, r in runners.items()}
    for h in hooks:
        h.remove()
    assert len(shapes) == len(layers) == 4 * 4 + 4 * 6  # every adapted layer ran once: ViT 4 x 4, BERT 4 x 6
    inter = core = phi = 0
    for mod, shape in shapes:
        n, s = math.prod(shape[:-1]), mod.out_splits
        nets = list(mod.cola_hypernet) if s > 1 else [mod.cola_hypernet]
        # per slice: rank-r down (d_in -> r) and up (r -> d_out / s)
        inter += sum(path(n, mod.in_features, mod.out_features // s, rank) for _ in range(s))
        core += 2 * n * (s * rank) ** 2  # the slices' cores as one block-diagonal (s r x s r) matrix, one bmm
        phi += sum(hypernet(2, net.fc1.in_features, net.fc1.out_features, rank) for net in nets)
    # the conditions: a masked mean, one (B, N) x (B, N, C) product per stream at each of the 3 stages (qkv, proj,
    # mlp: progressive propagation) of the 4 block pairs; 65 = 1 + (112 / 14)^2 vision tokens, 40 text tokens
    pooling = 4 * 3 * sum(2 * 2 * tokens * 192 for tokens in (65, 40))
    assert evals["cola"] - evals["lora"] == inter + core + phi + pooling
    # train: CoLA adds its inter paths (and per-slice intra down-projections on fused qkv) forward and backward: at
    # least the forward plus the weight (or activation) gradients, at most three times the eval extra plus the split
    extra = inter + core + phi + pooling
    qkv_split = sum(2 * math.prod(sh[:-1]) * m.in_features * rank * (m.out_splits - 1) for m, sh in shapes)
    low, high = 2 * extra, 3 * extra + 3 * qkv_split
    assert low <= train["cola"] - train["lora"] <= high
    ratio = train["cola"] / train["lora"]
    assert 1 + low / train["lora"] <= ratio <= 1 + high / train["lora"]


def test_compile_raises_the_recompile_limit_for_the_run_only(monkeypatch):
    """Six methods at batch sizes 1, 4, 8 compile 6 x 2 (train, merged eval) x 2 (static, dynamic batch) graphs of
    the same forward code, beyond torch's default limit of 8: ``run`` raises the limit for the run and restores it."""
    import torch._dynamo.config as dynamo

    assert bench.graphs_needed(6, 3) == 6 * 2 * 2 + 8 and bench.graphs_needed(2, 1) == 2 * 2 + 8
    seen = []
    monkeypatch.setattr(bench, "_run", lambda cfg: seen.append(dynamo.recompile_limit) or {})
    before = dynamo.recompile_limit
    bench.run(BenchConfig(tiny=True, batch=[1, 4, 8], methods=METHODS, compile=True))
    bench.run(BenchConfig(tiny=True, batch=[1, 4, 8], methods=METHODS))
    assert seen == [max(before, 32), before] and dynamo.recompile_limit == before
