"""Timing, floating-point work and memory of one method's train step and eval forward.

- Time: :func:`time_interleaved` runs every method (and batch size) once per round, rotating who goes first, so
  that a method's samples and another's from the same round are paired.
- FLOPs: :func:`count_flops` counts one train step (forward + backward; AdamW's elementwise update counts 0) and
  one eval forward with ``torch.utils.flop_counter.FlopCounterMode``. The counter counts matrix products,
  convolutions and attention only (plus CPU's fused attention and in-place ``addmm_``, which torch's table lacks: :data:`EXTRA_FLOP_FORMULAS`):
  elementwise work (norms, activations, the hypernetwork's scaling, optimiser updates) is not counted, so the
  FLOP ratio of two methods is the floor their time ratio would reach if every op ran at the same speed.
- Memory: :func:`measure_memory` runs each method in its own forked child of a fresh helper interpreter.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from .config import BenchConfig
from .models import SCHEDULE_STEPS, Pair, build_model, make_inputs, merge_for_eval, model_mb, trainable_params

log = logging.getLogger("cola.bench")

MEMORY_STEPS = 2  # training steps of a memory probe: the second one runs with the AdamW state allocated
MMAP_THRESHOLD = 128 * 1024  # glibc mmap threshold of the memory helper (see _memory_env)
RESULT_TAG = "BENCHMARK_MEMORY "  # prefix of the memory helper's result lines
REPO = Path(__file__).resolve().parents[2]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------------- flops
def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _addmm_inplace(self, a, b, *args, out_shape=None, **kwargs) -> int:
    return 2 * a[0] * a[1] * b[1]  # (m, k) @ (k, n): m n k multiply-adds, as torch's addmm formula


EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
    torch.ops.aten.addmm_: _addmm_inplace,
}
"""FLOP formulas ``FlopCounterMode``'s table lacks: CPU's fused attention (the same two batched products forward and
five backward as torch's own ``sdpa`` formulas for the CUDA kernels) and the in-place ``addmm_`` the adapters'
up-projection accumulates with (:mod:`cola.peft.upproject`)."""


def flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts :data:`EXTRA_FLOP_FORMULAS`."""
    return FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)


def count_flops(step: Callable[[], Any]) -> int:
    """Floating-point operations (multiply and add counted separately) of the matmuls, convolutions and attention
    ``step`` runs."""
    with flop_counter() as counter:
        step()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------- runner
class Runner:
    """One method: its model, AdamW on the trainable parameters, inputs, and timed train / eval steps."""

    def __init__(self, method: str, pair: Pair, cfg: BenchConfig, device: torch.device) -> None:
        self.method = method
        self.device = device
        self.model = build_model(method, pair, cfg, device)
        self.params_trainable = trainable_params(self.model)
        self.model_mb = model_mb(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # "fused" is what cola.tasks builds; "default": torch picks a per-tensor loop on CPU, multi-tensor on CUDA.
        kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[cfg.optimizer]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4, **kw)
        self.pair = pair
        self.batch = 0
        self.set_batch(cfg.batch[0])
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
        self.autocast = (
            (lambda: torch.autocast(device_type=device.type, dtype=dtype)) if dtype is not None else nullcontext
        )
        # fp16 trains with a loss scaler, as Lightning's 16-mixed does (bf16 needs none)
        self.scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "fp16" else None
        self.merged = False
        self.steps_taken = 0
        self.model.encoder.prepare_training(SCHEDULE_STEPS)

    def set_batch(self, batch: int) -> None:
        """Makes the following steps run on ``batch`` samples (the same deterministic inputs for every method)."""
        if batch != self.batch:
            self.inputs, self.target = make_inputs(self.pair, batch, self.device)
            self.batch = batch

    def train_step(self, *, eager: bool = False) -> None:
        """Forward, loss (with the intra variants' terms: AdaLoRA's regulariser), backward, AdamW step and the intra
        variants' per-step hook (AdaLoRA's budget allocation), as a training step of cola.tasks runs them.
        ``eager``: the uncompiled model (the FLOP count)."""
        self.optimizer.zero_grad(set_to_none=True)
        encoder = self.model.encoder
        with self.autocast():
            pred = (self.model if eager else self.forward)(self.inputs)  # (B, HEAD_DIM)
        loss = F.mse_loss(pred.float(), self.target)
        for extra in encoder.extra_losses().values():
            loss = loss + extra.float()
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        encoder.after_optimizer_step(self.steps_taken, SCHEDULE_STEPS)
        self.steps_taken += 1

    def prepare_eval(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        if not self.merged:
            merge_for_eval(self.model)
            self.merged = True

    def eval_step(self, *, eager: bool = False) -> None:
        with torch.no_grad(), self.autocast():
            (self.model if eager else self.forward)(self.inputs)

    def train_flops(self, batch: int) -> int:
        """FLOPs of one train step at ``batch`` (counted on the eager model: compilation does not change them)."""
        self.set_batch(batch)
        return count_flops(lambda: self.train_step(eager=True))

    def eval_flops(self, batch: int) -> int:
        """FLOPs of one eval forward at ``batch`` (after :meth:`prepare_eval`: merged, as timed)."""
        self.set_batch(batch)
        return count_flops(lambda: self.eval_step(eager=True))

    def timed(self, step: Callable[[], None]) -> float:
        """Milliseconds of one step, the device synchronised on both sides."""
        _sync(self.device)
        t0 = time.perf_counter()
        step()
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e3


def time_interleaved(
    runners: list[Runner],
    kind: str,
    *,
    steps: int,
    warmup: int,
    batches: list[int],
    on_round: Callable[[], None] | None = None,
) -> dict[int, dict[str, list[float]]]:
    """Step times (ms) of ``kind`` (``train`` | ``eval``) per batch size and method, interleaved.

    Each round runs every batch size, and within it every method once; the starting method and the first batch
    size rotate from round to round so that no method always follows the same one and no batch size always
    runs first (caches, allocator state, frequency scaling and slow drifts of the machine spread evenly).
    Sample ``i`` of every method of one batch size comes from the same round, so the per-round ratios of two
    methods are paired (:func:`paired_ratio_spread`). ``warmup`` untimed rounds come first; ``on_round`` is
    called after every timed round (the load sampler).
    """
    step = {r.method: (r.train_step if kind == "train" else r.eval_step) for r in runners}
    for i in range(warmup):
        for b in batches:
            for r in runners:
                r.set_batch(b)
                step[r.method]()
        log.info("%s warm-up %d/%d done", kind, i + 1, warmup)
    times: dict[int, dict[str, list[float]]] = {b: {r.method: [] for r in runners} for b in batches}
    n, nb = len(runners), len(batches)
    for i in range(steps):
        for b in batches[i % nb :] + batches[: i % nb]:
            for r in runners[i % n :] + runners[: i % n]:
                r.set_batch(b)
                times[b][r.method].append(r.timed(step[r.method]))
        if on_round is not None:
            on_round()
        log.info("%s round %d/%d done", kind, i + 1, steps)
    return times


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile), linear interpolation (``statistics.quantiles`` inclusive)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def paired_ratio_spread(num: list[float], den: list[float]) -> list[float] | None:
    """[p25, median, p75] of the per-round ratios ``num[i] / den[i]`` (samples of one round are paired)."""
    if not num or len(num) != len(den):
        return None
    return [round(v, 4) for v in quartiles([a / b for a, b in zip(num, den, strict=True)])]


# ----------------------------------------------------------------------------------------------------- memory
def _rss_kb(field_name: str) -> int | None:
    """A ``/proc/self/status`` field in kB (VmRSS, VmHWM), or None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Resets the resident-set high-water mark to the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _rss_kb("VmHWM") is not None
    except OSError:
        return False


def _maxrss_kb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform == "darwin" else float(r)  # macOS reports bytes, Linux kB


def probe_memory(method: str, pair: Pair, cfg: BenchConfig) -> dict[str, Any]:
    """Peak training memory above the built model for one method; run in a fresh (forked) process."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    runner = Runner(method, pair, cfg, device)
    gc.collect()
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(MEMORY_STEPS):
            runner.train_step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        how = "cuda max_memory_allocated - memory_allocated after build"
    elif _reset_hwm():
        base = _rss_kb("VmRSS") * 1024
        for _ in range(MEMORY_STEPS):
            runner.train_step()
        peak = _rss_kb("VmHWM") * 1024 - base
        how = (
            "VmHWM (reset via /proc/self/clear_refs after build) - VmRSS after build, "
            f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'glibc default')}"
        )
    else:
        base = _maxrss_kb() * 1024
        for _ in range(MEMORY_STEPS):
            runner.train_step()
        peak = _maxrss_kb() * 1024 - base
        how = "ru_maxrss delta from after build"
    return {"peak_mem_mb": max(peak, 0) / 2**20, "model_mb": runner.model_mb, "how": how}


def _fork_probe(method: str, pair: Pair, cfg: BenchConfig) -> dict[str, Any]:
    """Runs :func:`probe_memory` in a forked child and returns its result (or raises with its traceback)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            payload = {"ok": True, **probe_memory(method, pair, cfg)}
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            payload = {"ok": False, "error": traceback.format_exc()}
        with os.fdopen(write_fd, "w") as f:
            f.write(json.dumps(payload))
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"memory probe of {method!r} died without a result (wait status {status})")
    payload = json.loads(data)
    if not payload.pop("ok"):
        raise RuntimeError(f"memory probe of {method!r} failed:\n{payload['error']}")
    return payload


def memory_host(config: dict[str, Any]) -> None:
    """Entry of the helper interpreter: one forked child per method and batch size, results printed as tagged
    JSON lines.

    This interpreter only imports (no torch computation, no CUDA initialisation) before it forks, so each
    child starts clean; without ``os.fork`` each method gets its own fresh interpreter instead.
    """
    from .models import pair_spec

    cfg = BenchConfig(**config)
    pair = pair_spec(cfg.pair, tiny=cfg.tiny)
    for batch in list(cfg.batch):
        one = BenchConfig(**{**cfg.to_dict(), "batch": [batch]})
        for method in cfg.methods:
            if hasattr(os, "fork"):
                res = _fork_probe(method, pair, one)
            else:  # pragma: no cover - non-POSIX
                res = probe_memory(method, pair, one)
            sys.stdout.write(RESULT_TAG + json.dumps({"method": method, "batch": batch, **res}) + "\n")
            sys.stdout.flush()


def _memory_env() -> dict[str, str]:
    """Environment of the memory helper: glibc serves every block above 128 KiB with its own mmap, and this
    checkout's ``cola`` is importable.

    By default glibc raises its mmap threshold after large frees and then keeps freed tensors in its heap, so
    the resident set follows the allocator's history rather than the live tensors (a probe could read
    batch-4 LoRA above CoLA). A fixed threshold returns freed tensors at once: resident set ~ live bytes.
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), **os.environ, "PYTHONPATH": path}


def measure_memory(cfg: BenchConfig) -> dict[int, dict[str, dict[str, Any]]]:
    """Runs :func:`memory_host` in a fresh interpreter (per method where ``os.fork`` is missing); results by batch
    size, then method."""
    groups = [cfg.methods] if hasattr(os, "fork") else [[m] for m in cfg.methods]
    out: dict[int, dict[str, dict[str, Any]]] = {b: {} for b in cfg.batch}
    for group in groups:
        config = {**cfg.to_dict(), "methods": group, "json": None, "plot": None}
        code = "import json, sys; from cola.bench.measure import memory_host; memory_host(json.loads(sys.argv[1]))"
        cmd = [sys.executable, "-c", code, json.dumps(config)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_memory_env())
        if proc.returncode != 0:
            raise RuntimeError(f"memory helper failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                res = json.loads(line[len(RESULT_TAG) :])
                out[res.pop("batch")][res.pop("method")] = res
    missing = [(m, b) for b in cfg.batch for m in cfg.methods if m not in out[b]]
    if missing:
        raise RuntimeError(f"memory helper returned no result for {missing}")
    return out
