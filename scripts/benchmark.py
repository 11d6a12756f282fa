"""Speed and memory of CoLA against LoRA, HF peft's LoRA and MokA on the real dual-tower shapes.

    python scripts/benchmark.py                      # vision-language: DINOv2-B/14 @ 448 + BERT-B, 40 tokens
    python scripts/benchmark.py --pair av            # audio-visual: DINOv2-B/14 @ 224 + AST on 1-s clips
    python scripts/benchmark.py --tiny --json out.json   # tiny shapes, seconds on 2 CPU cores
    python scripts/benchmark.py --device cuda --dtype bf16 --batch 8 --compile

Every method gets the same random-init towers (same seed), the same adapted layers (docs/method.md#targets) and
rank, and a small trainable head (a linear layer on the mean-pooled tokens of both streams, MSE to a fixed random
target) so there is a loss. All adapter methods except ``peft_lora`` run through :class:`cola.models.DualEncoder`
(block by block in lockstep); ``peft_lora`` is HF peft's ``LoraConfig`` injected into the same towers, run in
the same lockstep loop (a ``frozen`` DualEncoder, so no condition is exchanged, exactly as our ``lora``), so
the two LoRA rows differ only in the layer implementation. Our ``lora`` uses ``split_fused: false`` by default
so that both LoRAs have the same parameters on timm's fused ``attn.qkv`` (``--lora-split-fused`` gives the
official per-slice layout).

What is measured, in one process, interleaved (round-robin over the methods, the starting method rotating
each round) after ``--warmup`` steps of every method:

- ``train_step_ms``: median of ``--steps`` training steps (forward, backward, AdamW step);
- ``eval_ms``: median of ``--steps`` forwards under ``torch.no_grad`` in eval mode with the intra paths
  merged (:func:`cola.peft.merge_adapters`; HF peft layers ``merge()``; MokA is not mergeable);
- ``peak_mem_mb``: peak memory of training above the built model, i.e. what a training step adds to the
  resident weights: activations, gradients, AdamW state and temporaries. Each method is measured in its
  own forked child of a fresh helper interpreter (that interpreter only imports; forking a process that has
  run OpenMP work hangs the child): CPU — resident-set high-water mark (``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``) minus the resident set after building the model, over two training steps
  (``ru_maxrss`` delta where ``/proc`` is unavailable), with glibc's mmap threshold fixed at 128 KiB so that
  freed tensors leave the resident set at once; CUDA — ``torch.cuda.max_memory_allocated()`` minus
  ``memory_allocated()`` after building the model. The resident size of each built model is in
  ``config.model_mb``;
- ``params_trainable``: trainable parameters (adapters + head; ``frozen`` trains the head only).

The JSON layout (README.md#performance): ``{"config", "results", "ratios"}`` with ratios ``<cola variant>/lora``,
``moka/lora`` and ``lora/peft_lora`` (see ``docs/benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python scripts/benchmark.py` from anywhere
    sys.path.insert(0, str(REPO))

from cola.models import (  # noqa: E402
    DualEncoder,
    Tower,
    build_ast,
    build_bert,
    build_vit,
    family_out_splits,
    family_targets,
)
from cola.peft import INTRA_VARIANTS, merge_adapters  # noqa: E402

log = logging.getLogger("benchmark")

METHODS = (
    "frozen",
    "lora",
    "peft_lora",
    "lora_param_matched",
    "cola",
    "cola_shared_a",
    "cola_shared_b",
    "cola_full",
    "moka",
    *(f"{v}" for v in INTRA_VARIANTS if v != "lora"),
    *(f"cola_{v}" for v in INTRA_VARIANTS if v != "lora"),
)
SPEC_METHODS = ("frozen", "lora", "peft_lora", "cola", "moka")  # the methods every JSON report names (README.md)
COLA_SHARING = {"cola": "none", "cola_shared_a": "shared_a", "cola_shared_b": "shared_b", "cola_full": "full"}
INTRA = tuple(v for v in INTRA_VARIANTS if v != "lora")
"""Intra-path variants (``peft.intra``, docs/method.md#intra-path-variants; every one of the table but plain LoRA,
which is the ``lora`` row): method ``<v>`` is our LoRA with that variant, ``cola_<v>`` CoLA over it (sharing none)."""
BENCH_ADALORA = {"tinit": 0, "tfinal": 0, "delta_t": 1}
"""``peft.adalora`` of the benchmark: a budget allocation after every timed step (the budget phase's cost, its
worst case: importance update, scores and the model-wide k-th value), over a schedule longer than the run."""
SCHEDULE_STEPS = 10**6  # the trainer's step count the intra variants are told (the budget phase never ends)
PAIRS = ("vl", "av")
HEAD_DIM = 16  # outputs of the benchmark head
TEXT_LEN = 40  # max query length of the grounding task (docs/official_settings.md#deliberate-differences)
MEMORY_STEPS = 2  # training steps of a memory probe: the second one runs with the AdamW state allocated
MMAP_THRESHOLD = 128 * 1024  # glibc mmap threshold of the memory helper (see _memory_env)
RESULT_TAG = "BENCHMARK_MEMORY "  # prefix of the memory helper's result lines

VIT_TARGETS = family_targets("vit")  # every linear layer of a block (docs/method.md#targets)
BERT_TARGETS = family_targets("bert")
AST_TARGETS = family_targets("ast")
VIT_SPLITS = family_out_splits("vit")  # fused qkv: one adapter per q, k, v slice
TINY_VIT = dict(name="vit_small_patch14_dinov2", img_size=112, embed_dim=192, depth=4, num_heads=3)
TINY_TRANSFORMER = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768)


# ----------------------------------------------------------------------------------------------------- towers
@dataclass
class PairSpec:
    """How to build one tower pair and its inputs.

    Attributes:
        name: ``vl`` or ``av``.
        family_b: the second tower's family (``bert`` | ``ast``).
        build_a: builds the vision model (timm).
        build_b: builds the text / audio model (transformers).
        targets_a: adapted layers of tower a (suffixes).
        targets_b: adapted layers of tower b.
        image_size: input resolution of the vision tower.
        pooling: CoLA condition pooling, as the task configs (grounding ``mean``, audio-visual ``cls``).
        describe: human-readable tower shapes for the JSON config.
    """

    name: str
    family_b: str
    build_a: Callable[[], nn.Module]
    build_b: Callable[[], nn.Module]
    targets_a: list[str]
    targets_b: list[str]
    image_size: int
    pooling: str
    describe: dict[str, str] = field(default_factory=dict)

    @property
    def streams(self) -> tuple[str, str]:
        """The stream names of the two towers (vision first)."""
        return ("vision", "text" if self.family_b == "bert" else "audio")


def pair_spec(pair: str, *, tiny: bool) -> PairSpec:
    """Random-init towers at the paper's shapes (or tiny ones) for ``pair`` in ``vl | av``."""
    if pair not in PAIRS:
        raise ValueError(f"--pair must be one of {list(PAIRS)}, got {pair!r}")
    if tiny:
        size = TINY_VIT["img_size"]

        def build_a() -> nn.Module:
            return build_vit(pretrained=False, **TINY_VIT)

        vision = f"tiny DINOv2-shaped ViT (192 wide, 4 blocks, patch 14) @ {size} px, random init"
    else:
        size = 448 if pair == "vl" else 224

        def build_a() -> nn.Module:
            return build_vit(name="vit_base_patch14_dinov2", img_size=size, pretrained=False)

        vision = f"vit_base_patch14_dinov2 @ {size} px, random init"
    if pair == "vl":
        bert_cfg = dict(TINY_TRANSFORMER) if tiny else {}  # {} = BertConfig defaults: BERT-base
        return PairSpec(
            name="vl",
            family_b="bert",
            build_a=build_a,
            build_b=lambda: build_bert(tiny=bert_cfg),
            targets_a=VIT_TARGETS,
            targets_b=BERT_TARGETS,
            image_size=size,
            pooling="mean",
            describe={
                "a": vision,
                "b": ("tiny BERT (192 wide, 4 layers)" if tiny else "BERT-base (BertConfig defaults)")
                + f", {TEXT_LEN} tokens, random init",
            },
        )
    ast_cfg = dict(TINY_TRANSFORMER) if tiny else {}  # {} = ASTConfig defaults: AST-base
    return PairSpec(
        name="av",
        family_b="ast",
        build_a=build_a,
        build_b=lambda: build_ast(tiny=ast_cfg, max_length=100, num_mel_bins=128),
        targets_a=VIT_TARGETS,
        targets_b=AST_TARGETS,
        image_size=size,
        pooling="cls",
        describe={
            "a": vision,
            "b": ("tiny AST (192 wide, 4 layers)" if tiny else "AST-base (ASTConfig defaults)")
            + ", 1-s clips: 100 frames x 128 mel bins, random init",
        },
    )


def make_inputs(spec: PairSpec, batch: int, device: torch.device) -> tuple[dict[str, dict], torch.Tensor]:
    """Deterministic random inputs of both towers, keyed by stream, and the head's regression target (B, HEAD_DIM)."""
    g = torch.Generator().manual_seed(1234)
    inputs_a = {"pixel_values": torch.randn(batch, 3, spec.image_size, spec.image_size, generator=g)}
    if spec.family_b == "bert":
        ids = torch.randint(1000, 30000, (batch, TEXT_LEN), generator=g)  # (B, L)
        lengths = [TEXT_LEN - (7 * i) % (TEXT_LEN // 2) for i in range(batch)]  # real queries vary in length
        mask = (torch.arange(TEXT_LEN)[None] < torch.tensor(lengths)[:, None]).long()  # (B, L)
        ids[:, 0] = 101  # [CLS]
        inputs_b = {"input_ids": ids * mask, "attention_mask": mask}
    else:
        inputs_b = {"input_values": torch.randn(batch, 100, 128, generator=g)}  # (B, T, mel)
    target = torch.randn(batch, HEAD_DIM, generator=g)
    move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return dict(zip(spec.streams, (move(inputs_a), move(inputs_b)), strict=True)), target.to(device)


# ----------------------------------------------------------------------------------------------------- models
class BenchModel(nn.Module):
    """The dual encoder plus a small trainable head: a linear layer on both streams' mean-pooled tokens."""

    def __init__(self, encoder: DualEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(sum(t.hidden_size for t in encoder.towers.values()), HEAD_DIM)

    def forward(self, inputs: dict[str, dict[str, torch.Tensor]]) -> torch.Tensor:
        out = self.encoder(inputs)
        pooled = []
        for stream, tokens in out.tokens.items():
            w = out.masks[stream].to(tokens.dtype).unsqueeze(-1)  # (B, N, 1)
            pooled.append((tokens * w).sum(1) / w.sum(1).clamp_min(1.0))  # (B, C)
        return self.head(torch.cat(pooled, dim=-1))  # (B, HEAD_DIM)


def peft_node(method: str, args: argparse.Namespace, pooling: str) -> dict[str, Any]:
    """The ``peft`` config node DualEncoder receives for ``method`` (``peft_lora``: frozen towers)."""
    if method in ("frozen", "peft_lora"):
        return {"method": "frozen"}
    common = {"rank": args.rank, "alpha": args.alpha, "dropout": 0.0}
    if method == "lora":
        return {"method": "lora", **common, "split_fused": args.lora_split_fused}
    if method in INTRA:  # the LoRA row's layout (one A/B on fused qkv unless --lora-split-fused), another intra path
        return {
            "method": "lora",
            **common,
            "split_fused": args.lora_split_fused,
            "intra": method,
            "adalora": BENCH_ADALORA,
        }
    if method.startswith("cola_") and method[5:] in INTRA:
        cola = {"sharing": "none", "condition_pooling": pooling, "intra": method[5:], "adalora": BENCH_ADALORA}
        return {"method": "cola", **common, **cola}
    if method == "moka":
        return {"method": "moka", **common, "condition_pooling": pooling}
    if method == "lora_param_matched":  # LoRA at the rank whose parameter count matches CoLA's (sharing none)
        return {"method": "lora_param_matched", **common, "condition_pooling": pooling, "split_fused": True}
    return {"method": "cola", **common, "sharing": COLA_SHARING[method], "condition_pooling": pooling}


def inject_hf_peft(model: nn.Module, targets: list[str], args: argparse.Namespace) -> None:
    """HF peft's LoRA on the same target layers (fused qkv stays one layer, as peft treats it)."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, model)


def build_model(method: str, spec: PairSpec, args: argparse.Namespace, device: torch.device) -> BenchModel:
    """One method's model on ``device``; every method starts from the same tower weights (seed 0)."""
    torch.manual_seed(0)
    tower_a, tower_b = Tower(spec.build_a(), "vit"), Tower(spec.build_b(), spec.family_b)
    vision, second = spec.streams
    encoder = DualEncoder(
        {vision: tower_a, second: tower_b},
        peft=peft_node(method, args, spec.pooling),
        targets={vision: spec.targets_a, second: spec.targets_b},
        out_splits={vision: VIT_SPLITS},
        gradient_checkpointing=args.gradient_checkpointing,
    )
    if method == "peft_lora":
        inject_hf_peft(tower_a.model, spec.targets_a, args)
        inject_hf_peft(tower_b.model, spec.targets_b, args)
    torch.manual_seed(1)
    return BenchModel(encoder).to(device)


def merge_for_eval(model: nn.Module) -> None:
    """Folds every mergeable LoRA path into its base weight (ours and HF peft's)."""
    merge_adapters(model)
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dev dependency
        return
    for m in model.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge()


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_mb(model: nn.Module) -> float:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


# ----------------------------------------------------------------------------------------------------- runner
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """One method: its model, AdamW on the trainable parameters, inputs, and timed train / eval steps."""

    def __init__(self, method: str, spec: PairSpec, args: argparse.Namespace, device: torch.device) -> None:
        self.method = method
        self.device = device
        self.model = build_model(method, spec, args, device)
        self.params_trainable = trainable_params(self.model)
        self.model_mb = model_mb(self.model)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        # "fused" is what cola.tasks builds; "default": torch picks a per-tensor loop on CPU, multi-tensor on CUDA.
        kw = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.optimizer]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-4, **kw)
        self.spec = spec
        self.batch = 0
        self.set_batch(args.batch[0] if isinstance(args.batch, list) else args.batch)
        self.forward = torch.compile(self.model) if args.compile else self.model
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        self.autocast = (
            (lambda: torch.autocast(device_type=device.type, dtype=dtype)) if dtype is not None else nullcontext
        )
        # fp16 trains with a loss scaler, as Lightning's 16-mixed does (bf16 needs none)
        self.scaler = torch.amp.GradScaler(device.type) if args.dtype == "fp16" else None
        self.merged = False
        self.steps_taken = 0
        self.model.encoder.prepare_training(SCHEDULE_STEPS)

    def set_batch(self, batch: int) -> None:
        """Makes the following steps run on ``batch`` samples (the same deterministic inputs for every method)."""
        if batch != self.batch:
            self.inputs, self.target = make_inputs(self.spec, batch, self.device)
            self.batch = batch

    def train_step(self) -> None:
        """Forward, loss (with the intra variants' terms: AdaLoRA's regulariser), backward, AdamW step and the intra
        variants' per-step hook (AdaLoRA's budget allocation), as a training step of cola.tasks runs them."""
        self.optimizer.zero_grad(set_to_none=True)
        encoder = self.model.encoder
        with self.autocast():
            pred = self.forward(self.inputs)  # (B, HEAD_DIM)
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

    def eval_step(self) -> None:
        with torch.no_grad(), self.autocast():
            self.forward(self.inputs)

    def timed(self, step: Callable[[], None]) -> float:
        """Milliseconds of one step, the device synchronised on both sides."""
        _sync(self.device)
        t0 = time.perf_counter()
        step()
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e3


def time_interleaved(
    runners: list[Runner], kind: str, *, steps: int, warmup: int, batches: list[int]
) -> dict[int, dict[str, list[float]]]:
    """Step times (ms) of ``kind`` (``train`` | ``eval``) per batch size and method, interleaved.

    Each round runs every batch size, and within it every method once; the starting method and the first batch
    size rotate from round to round so that no method always follows the same one and no batch size always
    runs first (caches, allocator state, frequency scaling and slow drifts of the machine spread evenly).
    Sample ``i`` of every method of one batch size comes from the same round, so the per-round ratios of two
    methods are paired (:func:`paired_ratio_spread`). ``warmup`` untimed rounds come first.
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


def probe_memory(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Peak training memory above the built model for one method; run in a fresh (forked) process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = pair_spec(args.pair, tiny=args.tiny)
    runner = Runner(method, spec, args, device)
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


def _fork_probe(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs :func:`probe_memory` in a forked child and returns its result (or raises with its traceback)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            payload = {"ok": True, **probe_memory(method, args)}
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


def memory_host(args: argparse.Namespace) -> None:
    """Entry of the helper interpreter: one forked child per method and batch size, results printed as tagged
    JSON lines.

    This interpreter only imports (no torch computation, no CUDA initialisation) before it forks, so each
    child starts clean; without ``os.fork`` each method gets its own fresh interpreter instead.
    """
    for batch in args.batch:
        one = argparse.Namespace(**{**vars(args), "batch": [batch]})
        for method in args.methods:
            if hasattr(os, "fork"):
                res = _fork_probe(method, one)
            else:  # pragma: no cover - non-POSIX
                res = probe_memory(method, one)
            print(RESULT_TAG + json.dumps({"method": method, "batch": batch, **res}), flush=True)


def _memory_env() -> dict[str, str]:
    """Environment of the memory helper: glibc serves every block above 128 KiB with its own mmap.

    By default glibc raises its mmap threshold after large frees and then keeps freed tensors in its heap, so
    the resident set follows the allocator's history rather than the live tensors (a probe could read
    batch-4 LoRA above CoLA). A fixed threshold returns freed tensors at once: resident set ~ live bytes.
    """
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), **os.environ}


def measure_memory(argv: list[str], methods: list[str], batches: list[int]) -> dict[int, dict[str, dict[str, Any]]]:
    """Runs :func:`memory_host` in a fresh interpreter (per method where ``os.fork`` is missing); results by batch
    size, then method."""
    groups = [methods] if hasattr(os, "fork") else [[m] for m in methods]
    out: dict[int, dict[str, dict[str, Any]]] = {b: {} for b in batches}
    for group in groups:
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-host", "--methods", *group]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_memory_env())
        if proc.returncode != 0:
            raise RuntimeError(f"memory helper failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith(RESULT_TAG):
                res = json.loads(line[len(RESULT_TAG) :])
                out[res.pop("batch")][res.pop("method")] = res
    missing = [(m, b) for b in batches for m in methods if m not in out[b]]
    if missing:
        raise RuntimeError(f"memory helper returned no result for {missing}")
    return out


# ----------------------------------------------------------------------------------------------------- report
def _ratio(num: float | None, den: float | None) -> float | None:
    """num / den rounded, ``None`` when a value was not measured or the denominator is zero."""
    if num is None or den is None or den <= 0:
        return None
    return round(num / den, 4)


RATIO_PAIRS = (
    [(m, "lora") for m in (*COLA_SHARING, "moka")]
    + [("lora", "peft_lora"), ("cola", "lora_param_matched")]
    + [(v, "lora") for v in INTRA]
    + [(f"cola_{v}", v) for v in INTRA]
    + [(f"cola_{v}", "lora") for v in INTRA]
)
"""(numerator, denominator) of every reported ratio, when both methods ran."""


def compute_ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``<cola variant>/lora``, ``moka/lora``, ``lora/peft_lora`` and ``cola/lora_param_matched`` (equal
    trainable parameters, hence equal gradient and AdamW memory) for the methods that were run (one batch size)."""
    by = {r["method"]: r for r in results}
    ratios = {}
    for num, den in RATIO_PAIRS:
        if num in by and den in by:
            ratios[f"{num}/{den}"] = {
                key: _ratio(by[num][field_], by[den][field_])
                for key, field_ in (("train_step", "train_step_ms"), ("eval", "eval_ms"), ("peak_mem", "peak_mem_mb"))
            }
    return ratios


def ratio_spreads(train: dict[str, list[float]], evals: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """[p25, median, p75] of the per-round (paired) train-step and eval ratios of every pair of
    :data:`RATIO_PAIRS` that ran: how far one round's ratio moves around the ratio of the medians."""
    return {
        f"{num}/{den}": {
            "train_step": paired_ratio_spread(train[num], train[den]),
            "eval": paired_ratio_spread(evals[num], evals[den]),
        }
        for num, den in RATIO_PAIRS
        if num in train and den in train
    }


def plot_ratios(report: dict[str, Any], path: Path) -> Path:
    """One panel per measure (train step, eval, peak memory): each ratio against the batch size, the per-round
    interquartile range as error bars; a dashed line at 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_batch = report["ratios_by_batch"]
    batches = sorted(int(b) for b in by_batch)
    names = list(dict.fromkeys(n for b in by_batch.values() for n in b))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    for ax, key, title in zip(axes, ("train_step", "eval", "peak_mem"), ("train step", "eval", "peak memory")):
        for name in names:
            ys = [by_batch[str(b)].get(name, {}).get(key) for b in batches]
            spreads = [report["spread_by_batch"][str(b)].get(name, {}).get(key) for b in batches]
            if all(y is None for y in ys):
                continue
            xs = [b for b, y in zip(batches, ys) if y is not None]
            yv = [y for y in ys if y is not None]
            err = None
            if key != "peak_mem" and all(sp is not None for sp in spreads):
                err = [
                    [max(0.0, y - sp[0]) for y, sp in zip(yv, spreads)],
                    [max(0.0, sp[2] - y) for y, sp in zip(yv, spreads)],
                ]
            ax.errorbar(xs, yv, yerr=err, marker="o", capsize=3, label=name)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("batch size")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
    axes[0].set_ylabel("ratio (numerator / denominator)")
    axes[-1].legend(fontsize=8, loc="best")
    cfg = report["config"]
    fig.suptitle(
        f"{cfg['pair']} {'tiny' if cfg['tiny'] else 'full'} | {cfg['device']} {cfg['dtype']} | rank {cfg['rank']} | "
        f"median of {cfg['steps']} interleaved rounds, bars: per-round IQR",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU / GPU and library versions for the JSON config."""
    import timm
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:  # pragma: no cover
        info["peft"] = None
    info["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return info


def print_table(report: dict[str, Any]) -> None:
    """The results as rich tables, one per batch size (times are medians; ratios against ``lora``), then the ratios
    by batch size with the per-round interquartile range of the time ratios."""
    from rich.console import Console
    from rich.table import Table

    cfg = report["config"]
    console = Console(width=None if sys.stdout.isatty() else 140)
    batches = sorted({r["batch"] for r in report["results"]})
    for batch in batches:
        rows = [r for r in report["results"] if r["batch"] == batch]
        title = (
            f"{cfg['pair']} {'tiny' if cfg['tiny'] else 'full'} | {cfg['device']} {cfg['dtype']}"
            f"{' compiled' if cfg['compile'] else ''} | batch {batch} rank {cfg['rank']} | "
            f"median of {cfg['steps']} steps [p25-p75]"
        )
        table = Table(title=title)
        for col in ("method", "train step ms", "eval ms", "peak mem MB", "trainable params", "train/lora", "eval/lora"):
            table.add_column(col, justify="left" if col == "method" else "right")
        lora = next((r for r in rows if r["method"] == "lora"), None)
        for r in rows:
            rel = ("-", "-")
            if lora is not None:
                rel = tuple(f"{r[k] / lora[k]:.3f}" for k in ("train_step_ms", "eval_ms"))
            iq = {k: r.get(f"{k}_iqr") for k in ("train_step_ms", "eval_ms")}
            cell = {k: f"{r[k]:.1f}" + (f" [{iq[k][0]:.0f}-{iq[k][1]:.0f}]" if iq[k] else "") for k in iq}
            table.add_row(
                r["method"],
                cell["train_step_ms"],
                cell["eval_ms"],
                "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.1f}",
                f"{r['params_trainable']:,}",
                *rel,
            )
        console.print(table)
    by_batch = report.get("ratios_by_batch") or {str(batches[-1]): report["ratios"]}
    spreads = report.get("spread_by_batch", {})
    if any(by_batch.values()):
        rt = Table(title="ratios (numerator / denominator): ratio of medians [p25-p75 of the per-round ratios]")
        for col in ("pair", "batch", "train_step", "eval", "peak_mem"):
            rt.add_column(col, justify="left" if col == "pair" else "right")
        for batch in batches:
            for name, v in by_batch[str(batch)].items():
                sp = spreads.get(str(batch), {}).get(name, {})
                cells = []
                for k in ("train_step", "eval", "peak_mem"):
                    text = "-" if v[k] is None else f"{v[k]:.3f}"
                    if sp.get(k):
                        text += f" [{sp[k][0]:.2f}-{sp[k][2]:.2f}]"
                    cells.append(text)
                rt.add_row(name, str(batch), *cells)
        console.print(rt)


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pair", choices=PAIRS, default="vl", help="vl: DINOv2-B@448 + BERT-B; av: DINOv2-B@224 + AST")
    p.add_argument("--tiny", action="store_true", help="tiny towers (192 wide, 4 blocks, 112 px): seconds on a CPU")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=None, metavar="METHOD",
                   help=f"subset of {' '.join(METHODS)} (default: all; with --tiny: {' '.join(SPEC_METHODS)})")  # fmt: skip
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="bf16 / fp16: autocast (weights stay fp32; fp16 with a GradScaler)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up includes compilation)")
    p.add_argument("--batch", type=int, nargs="+", default=[2],
                   help="batch size(s); several (e.g. 1 4 8) are measured in one run, interleaved")  # fmt: skip
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="default rank / 2, as rank=R in train.py")
    p.add_argument("--lora-split-fused", action="store_true",
                   help="our lora: per-slice q/k/v adapters on fused qkv (official); default one A/B as HF peft")  # fmt: skip
    p.add_argument("--steps", type=int, default=20, help="timed steps per method (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per method first")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--optimizer", choices=("default", "foreach", "fused"), default="fused",
                   help="AdamW implementation: fused=True (as cola.tasks), torch's default or foreach=True")  # fmt: skip
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute tower blocks in backward (model.gradient_checkpointing=true)")  # fmt: skip
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes (peak_mem_mb = null)")
    p.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--plot", type=Path, default=None,
                   help="PNG of each ratio against the batch size (default with --json and several batch sizes: "
                   "the JSON path with .png)")  # fmt: skip
    p.add_argument("--memory-host", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("rank", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    bad = [b for b in args.batch if b < 1]
    if bad:
        raise ValueError(f"--batch must be positive integers, got {bad}")
    args.batch = sorted(set(args.batch))
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    if args.alpha is None:
        args.alpha = args.rank / 2
    if args.device == "cuda" and not args.memory_host and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    if args.methods is None:  # --tiny: the reported methods only, so that the quick check stays under a minute
        args.methods = list(SPEC_METHODS if args.tiny else METHODS)
    args.methods = list(dict.fromkeys(args.methods))  # order kept, duplicates dropped
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark; returns the report (also printed and, with ``--json``, written)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_host:
        memory_host(args)
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("cola").setLevel(logging.WARNING)  # the injection reports of every build
    t_start = time.perf_counter()

    memory: dict[int, dict[str, dict[str, Any]]] = {}
    if not args.no_memory:  # first, while this process holds no model
        log.info("memory probes: %s at batch %s", " ".join(args.methods), " ".join(map(str, args.batch)))
        memory = measure_memory([a for a in argv if a != "--memory-host"], args.methods, args.batch)

    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load_start > (os.cpu_count() or 1) - torch.get_num_threads() + 0.5:
        log.warning(
            "load average %.1f on %d cores with %d torch threads: other processes compete for the cores and "
            "small ops can stall for a scheduler slice; use a quiet machine or fewer --threads",
            load_start,
            os.cpu_count() or 1,
            torch.get_num_threads(),
        )
    device = torch.device(args.device)
    spec = pair_spec(args.pair, tiny=args.tiny)
    runners = []
    for method in args.methods:
        runners.append(Runner(method, spec, args, device))
        log.info("built %s (%s trainable parameters)", method, f"{runners[-1].params_trainable:,}")
    train = time_interleaved(runners, "train", steps=args.steps, warmup=args.warmup, batches=args.batch)
    for r in runners:
        r.prepare_eval()
    evals = time_interleaved(runners, "eval", steps=args.steps, warmup=args.warmup, batches=args.batch)

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
        }

    results = [row(r, b) for b in args.batch for r in runners]  # by batch size, ascending; methods in run order
    ratios_by_batch = {str(b): compute_ratios([x for x in results if x["batch"] == b]) for b in args.batch}
    config = {
        "pair": args.pair,
        "tiny": args.tiny,
        "towers": spec.describe,
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "batch": args.batch,
        "rank": args.rank,
        "alpha": args.alpha,
        "dropout": 0.0,
        "steps": args.steps,
        "warmup": args.warmup,
        "methods": args.methods,
        "targets_a": spec.targets_a,
        "targets_b": spec.targets_b,
        "out_splits_a": VIT_SPLITS,
        "condition_pooling": spec.pooling,
        "propagation": "progressive",
        "lora_split_fused": args.lora_split_fused,
        "gradient_checkpointing": args.gradient_checkpointing,
        "optimizer": {
            "default": "AdamW (torch default: per-tensor loop on CPU)",
            "foreach": "AdamW(foreach=True)",
            "fused": "AdamW(fused=True)",
        }[args.optimizer],
        "peft_lora": "HF peft LoraConfig injected into the same towers, run in the same lockstep DualEncoder loop",
        "timing": "median ms, methods interleaved round-robin in one process after warm-up; eval under no_grad "
        "in eval mode with intra paths merged",
        "peak_mem": "MB a training step adds above the built model (activations, grads, AdamW state), each method "
        f"in a fresh forked process over {MEMORY_STEPS} steps: "
        + (next(iter(memory[args.batch[0]].values()))["how"] if memory else "not measured (--no-memory)"),
        "model_mb": {r.method: round(r.model_mb, 1) for r in runners},
        "step_times_ms": {
            str(b): {
                r.method: {
                    "train": [round(t, 2) for t in train[b][r.method]],
                    "eval": [round(t, 2) for t in evals[b][r.method]],
                }
                for r in runners
            }
            for b in args.batch
        },
        "machine": machine_info(device),
    }
    report = {
        "config": config,
        "results": results,
        "ratios": ratios_by_batch[str(args.batch[-1])],  # the largest batch size's (SPEC layout)
        "ratios_by_batch": ratios_by_batch,
        "spread_by_batch": {str(b): ratio_spreads(train[b], evals[b]) for b in args.batch},
    }
    config["machine"]["load_average_start"] = round(load_start, 2)
    config["wall_s"] = round(time.perf_counter() - t_start, 1)
    print_table(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", args.json)
    plot = args.plot or (args.json.with_suffix(".png") if args.json is not None and len(args.batch) > 1 else None)
    if plot is not None:
        log.info("wrote %s", plot_ratios(report, plot))
    return report


if __name__ == "__main__":
    main()
