"""Speed, floating-point work and memory of CoLA against LoRA, HF peft's LoRA and MokA on the real dual-tower shapes.

``scripts/benchmark.py`` parses the command line into a :class:`BenchConfig` and calls :func:`run`:

- :mod:`cola.bench.config` — the options and the methods (asked from :data:`cola.peft.METHODS`);
- :mod:`cola.bench.models` — each method's model, composed from ``configs/`` and built by the harness;
- :mod:`cola.bench.measure` — interleaved timing, FLOP counts (``FlopCounterMode``), memory probes;
- :mod:`cola.bench.report` — ratios, FLOP floors and overheads, the memory account, machine load, tables, plot.

What is measured, in one process, interleaved (round-robin over the methods, the starting method rotating each
round) after ``warmup`` rounds (docs/benchmarks/README.md):

- ``train_step_ms``: median of ``steps`` training steps (forward, backward, AdamW step);
- ``eval_ms``: median of ``steps`` forwards under ``torch.no_grad`` in eval mode with the intra paths merged
  (:func:`cola.peft.merge_adapters`; HF peft layers ``merge()``; MokA is not mergeable);
- ``train_flops`` / ``eval_flops``: matmul, convolution and attention FLOPs of one train step (forward +
  backward) and one eval forward; every time ratio is reported beside the FLOP ratio of the same pair;
- ``peak_mem_mb``: peak memory of training above the built model (activations, gradients, AdamW state and
  temporaries), each method in its own forked child of a fresh helper interpreter;
- ``params_trainable``: trainable parameters (adapters + head; ``frozen`` trains the head only).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from typing import Any

import torch

from .config import (
    FLOOR,
    HF_PEFT,
    INTRA,
    MATCHED,
    METHODS,
    PAIRS,
    REPORTED_METHODS,
    ROWS,
    SHARING_ROWS,
    BenchConfig,
    Row,
)
from .measure import (
    MEMORY_STEPS,
    Runner,
    count_flops,
    flop_counter,
    measure_memory,
    paired_ratio_spread,
    quartiles,
    time_interleaved,
)
from .models import BenchModel, build_model, make_inputs, merge_for_eval, method_overrides, pair_spec, trainable_params
from .report import (
    RATIO_PAIRS,
    competing_load,
    compute_flop_ratios,
    compute_ratios,
    is_loaded,
    load_warning,
    machine_info,
    memory_account,
    plot_ratios,
    print_table,
    ratio_spreads,
    render_tables,
)

__all__ = [
    "FLOOR",
    "HF_PEFT",
    "INTRA",
    "MATCHED",
    "METHODS",
    "PAIRS",
    "RATIO_PAIRS",
    "REPORTED_METHODS",
    "ROWS",
    "SHARING_ROWS",
    "BenchConfig",
    "BenchModel",
    "Row",
    "Runner",
    "build_model",
    "competing_load",
    "compute_flop_ratios",
    "compute_ratios",
    "count_flops",
    "flop_counter",
    "is_loaded",
    "load_warning",
    "make_inputs",
    "memory_account",
    "merge_for_eval",
    "method_overrides",
    "pair_spec",
    "paired_ratio_spread",
    "plot_ratios",
    "quartiles",
    "render_tables",
    "run",
    "time_interleaved",
    "trainable_params",
]

log = logging.getLogger("cola.bench")

OPTIMIZER_TEXT = {
    "default": "AdamW (torch default: per-tensor loop on CPU)",
    "foreach": "AdamW(foreach=True)",
    "fused": "AdamW(fused=True)",
}


def _load1() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def graphs_needed(methods: int, batches: int) -> int:
    """Compiled graphs one benchmark process asks of the shared ``forward`` code objects: every method's model is
    its own graph (the same code, other modules), in train and in merged eval, each once static and once with the
    batch dimension dynamic when more than one batch size runs; plus 8 to spare (torch's own default limit)."""
    return methods * 2 * min(batches, 2) + 8


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Runs the benchmark; returns the report (also printed and, with ``cfg.json``, written). Under ``compile``,
    torch's recompile limit is raised to :func:`graphs_needed` for the run (and restored): at its default of 8 the
    later methods would fall back to eager without a word, and their compiled times would be eager ones.

    Raises:
        ValueError: ``device='cuda'`` where no CUDA device is available.
    """
    if not cfg.compile:
        return _run(cfg)
    import torch._dynamo.config as dynamo

    limit = dynamo.recompile_limit
    dynamo.recompile_limit = max(limit, graphs_needed(len(cfg.methods), len(cfg.batch)))
    log.info("compile: recompile_limit %d (torch default %d)", dynamo.recompile_limit, limit)
    try:
        return _run(cfg)
    finally:
        dynamo.recompile_limit = limit


def _run(cfg: BenchConfig) -> dict[str, Any]:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    logging.getLogger("cola").setLevel(logging.WARNING)  # the injection reports of every build
    log.setLevel(logging.INFO)
    t_start = time.perf_counter()
    load_start = _load1()  # before anything of ours runs

    memory: dict[int, dict[str, dict[str, Any]]] = {}
    if not cfg.no_memory:  # first, while this process holds no model
        log.info("memory probes: %s at batch %s", " ".join(cfg.methods), " ".join(map(str, cfg.batch)))
        memory = measure_memory(cfg)

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads, cpus = torch.get_num_threads(), os.cpu_count() or 1
    if is_loaded(load_start, 0.0, cpus=cpus, threads=threads):
        log.warning(
            "load average %.1f on %d cores with %d torch threads: other processes compete for the cores and "
            "small ops can stall for a scheduler slice; use a quiet machine or fewer --threads",
            load_start,
            cpus,
            threads,
        )
    device = torch.device(cfg.device)
    pair = pair_spec(cfg.pair, tiny=cfg.tiny)
    runners = []
    for method in cfg.methods:
        runners.append(Runner(method, pair, cfg, device))
        log.info("built %s (%s trainable parameters)", method, f"{runners[-1].params_trainable:,}")
    # FLOPs before timing: the counted train step is one more warm-up step of every method
    flops = {b: {r.method: {"train": r.train_flops(b)} for r in runners} for b in cfg.batch}
    load_samples: list[float] = []
    sample = lambda: load_samples.append(_load1())  # noqa: E731
    train = time_interleaved(runners, "train", steps=cfg.steps, warmup=cfg.warmup, batches=cfg.batch, on_round=sample)
    for r in runners:
        r.prepare_eval()
        for b in cfg.batch:
            flops[b][r.method]["eval"] = r.eval_flops(b)
    evals = time_interleaved(runners, "eval", steps=cfg.steps, warmup=cfg.warmup, batches=cfg.batch, on_round=sample)

    def row(r: Runner, batch: int) -> dict[str, Any]:
        t, e = train[batch][r.method], evals[batch][r.method]
        return {
            "method": r.method,
            "batch": batch,
            "train_step_ms": round(statistics.median(t), 3),
            "eval_ms": round(statistics.median(e), 3),
            "peak_mem_mb": round(memory[batch][r.method]["peak_mem_mb"], 3) if memory else None,
            "params_trainable": int(r.params_trainable),
            "train_step_ms_iqr": [round(q, 3) for q in quartiles(t)[::2]],
            "eval_ms_iqr": [round(q, 3) for q in quartiles(e)[::2]],
            "train_flops": flops[batch][r.method]["train"],
            "eval_flops": flops[batch][r.method]["eval"],
        }

    results = [row(r, b) for b in cfg.batch for r in runners]  # by batch size, ascending; methods in run order
    by_batch = {b: [x for x in results if x["batch"] == b] for b in cfg.batch}
    ratios_by_batch = {str(b): compute_ratios(by_batch[b]) for b in cfg.batch}
    flops_by_batch = {str(b): flops[b] for b in cfg.batch}
    flop_ratios_by_batch = {str(b): compute_flop_ratios(flops[b], ratios_by_batch[str(b)]) for b in cfg.batch}
    first = runners[0].model
    streams = list(first.targets)
    config = {
        "pair": cfg.pair,
        "tiny": cfg.tiny,
        "towers": pair.describe,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "compile": cfg.compile,
        "batch": cfg.batch,
        "rank": cfg.rank,
        "alpha": cfg.alpha,
        "dropout": 0.0,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "methods": cfg.methods,
        "hydra_overrides": {m: [*pair.overrides, *method_overrides(m, cfg)] for m in cfg.methods},
        "targets_a": first.targets[streams[0]],
        "targets_b": first.targets[streams[1]],
        "out_splits_a": first.out_splits[streams[0]],
        "condition_pooling": "mean" if cfg.pair == "vl" else "cls",
        "propagation": "progressive",
        "lora_split_fused": cfg.lora_split_fused,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "optimizer": OPTIMIZER_TEXT[cfg.optimizer],
        HF_PEFT: "HF peft LoraConfig injected into the same towers, run in the same lockstep DualEncoder loop",
        "timing": "median ms, methods interleaved round-robin in one process after warm-up; eval under no_grad "
        "in eval mode with intra paths merged",
        "flops": "torch.utils.flop_counter.FlopCounterMode: matmul, convolution and attention FLOPs of one train "
        "step (forward + backward) and one eval forward, on the eager model; elementwise work is not counted, "
        "so a FLOP ratio is a lower bound of the time ratio",
        "peak_mem": "MB a training step adds above the built model (activations, grads, AdamW state), each method "
        f"in a fresh forked process over {MEMORY_STEPS} steps: "
        + (next(iter(memory[cfg.batch[0]].values()))["how"] if memory else "not measured (--no-memory)"),
        "model_mb": {r.method: round(r.model_mb, 1) for r in runners},
        "step_times_ms": {
            str(b): {
                r.method: {
                    "train": [round(t, 2) for t in train[b][r.method]],
                    "eval": [round(t, 2) for t in evals[b][r.method]],
                }
                for r in runners
            }
            for b in cfg.batch
        },
        "machine": machine_info(device),
    }
    machine = config["machine"]
    machine["load_average_start"] = round(load_start, 2)
    machine["load_samples"] = [round(v, 2) for v in load_samples]
    machine["competing_load"] = competing_load(load_samples, threads)
    # a GPU run's time does not depend on the host's other jobs the way a CPU run's does
    machine["loaded"] = cfg.device == "cpu" and is_loaded(
        load_start, machine["competing_load"], cpus=cpus, threads=threads
    )
    top = str(cfg.batch[-1])
    report = {
        "config": config,
        "results": results,
        "ratios": ratios_by_batch[top],  # the largest batch size's
        "ratios_by_batch": ratios_by_batch,
        "spread_by_batch": {str(b): ratio_spreads(train[b], evals[b]) for b in cfg.batch},
        "flops": flops_by_batch[top],
        "flops_by_batch": flops_by_batch,
        "flop_ratios": flop_ratios_by_batch[top],
        "flop_ratios_by_batch": flop_ratios_by_batch,
        "memory": memory_account(by_batch[cfg.batch[-1]]),
        "memory_by_batch": {str(b): memory_account(by_batch[b]) for b in cfg.batch},
    }
    config["wall_s"] = round(time.perf_counter() - t_start, 1)
    print_table(report)
    if cfg.json is not None:
        cfg.json.parent.mkdir(parents=True, exist_ok=True)
        cfg.json.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", cfg.json)
    plot = cfg.plot or (cfg.json.with_suffix(".png") if cfg.json is not None and len(cfg.batch) > 1 else None)
    if plot is not None:
        log.info("wrote %s", plot_ratios(report, plot))
    return report
