"""Where a training step's time goes: ``torch.profiler`` self time by op and by module, per method.

    python scripts/profile_step.py --batch 4 --methods frozen lora cola --out docs/benchmarks/profile_b4
    python scripts/profile_step.py --tiny --batch 8 --out /tmp/prof          # seconds on a CPU

Builds the same models as the benchmark (:mod:`cola.bench`: same towers, seed, targets, inputs, fused AdamW), runs
``--warmup`` untimed training steps of every method, then profiles ``--steps`` training steps of each method in
turn (CPU activity; CUDA too with ``--device cuda``). Each step is split into three labelled phases
(``phase/forward``, ``phase/backward``, ``phase/optimizer``). In the forward, every module of a category gets a
``record_function`` range, so the forward is also split *by module*:

- ``fwd/base_linear``: the frozen ``nn.Linear`` of an adapted layer (its GEMM);
- ``fwd/adapter``: an adapter layer minus its base linear and hypernetworks (down/up-projections, the r x r core);
- ``fwd/hypernet``: CoLA's hypernetworks (the stacked q/k/v ones included);
- ``fwd/condition``: the dual encoder's pooling of conditions (:meth:`cola.models.DualEncoder` ``_pool``);
- ``fwd/other_linear``, ``fwd/norm``, ``fwd/mlp_act`` (and ``fwd/attention`` where a tower calls its attention
  module; the lockstep block steps call its parts): the rest of the towers.

The backward cannot be split by module this way (autograd runs outside the hooks); its ops are listed by name
(``autograd::engine::evaluate_function: AddmmBackward0`` ...), and the op tables carry the shapes
(``record_shapes``) that tie them to layers.

Writes into ``--out``: ``summary.json`` (per method: wall ms of each phase, forward ms per module category, self
CPU ms per op, per op *and* input shapes), ``<method>_ops.txt`` (the profiler's table by self CPU time) and
``summary.md`` (the phase and category tables side by side, and the ops whose self time differs most between
each method and the first method after ``frozen``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

import benchmark as bench_cli  # noqa: E402  (the benchmark's command line: its model options)

from cola import bench  # noqa: E402
from cola.peft import PAPER_METHOD, REFERENCE_METHOD  # noqa: E402
from cola.peft.hypernet import HyperNetwork  # noqa: E402
from cola.peft.layers import AdapterLinear  # noqa: E402

PHASES = ("forward", "backward", "optimizer")


def module_category(name: str, module: nn.Module, adapted_bases: set[int]) -> str | None:
    """The forward category of ``module`` (``None``: not labelled; its time counts in its parent's)."""
    if isinstance(module, HyperNetwork) or (isinstance(module, nn.ModuleList) and name.endswith("cola_hypernet")):
        return "hypernet"
    if isinstance(module, AdapterLinear):
        return "adapter"
    if isinstance(module, nn.Linear):
        return "base_linear" if id(module) in adapted_bases else "other_linear"
    if isinstance(module, (nn.LayerNorm,)) or type(module).__name__.endswith(("LayerNorm", "RMSNorm")):
        return "norm"
    if isinstance(module, (nn.GELU, nn.ReLU, nn.SiLU)) or type(module).__name__.endswith(("Activation", "GELU")):
        return "mlp_act"
    kind = type(module).__name__
    if kind in ("Attention", "BertSdpaSelfAttention", "BertSelfAttention", "ASTSdpaSelfAttention"):
        return "attention"
    return None


def label_modules(model: nn.Module) -> list[Any]:
    """Forward pre/post hooks opening and closing one ``fwd/<category>`` range per labelled module."""
    adapted = {id(m.base_layer) for m in model.modules() if isinstance(m, AdapterLinear)}
    handles = []
    for name, module in model.named_modules():
        cat = module_category(name, module, adapted)
        if cat is None:
            continue
        stack: list[Any] = []

        def pre(_m, _args, cat=cat, stack=stack):
            rf = record_function(f"fwd/{cat}")
            rf.__enter__()
            stack.append(rf)

        def post(_m, _args, _out, stack=stack):
            stack.pop().__exit__(None, None, None)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def profiled_step(runner: bench.Runner) -> None:
    """One training step of ``runner`` with its three phases labelled."""
    runner.optimizer.zero_grad(set_to_none=True)
    with record_function("phase/forward"), runner.autocast():
        pred = runner.forward(runner.inputs)
    loss = F.mse_loss(pred.float(), runner.target)
    with record_function("phase/backward"):
        loss.backward()
    with record_function("phase/optimizer"):
        runner.optimizer.step()
    bench.measure._sync(runner.device)


def summarise(prof: profile, steps: int) -> dict[str, Any]:
    """Per-step ms: phases and forward categories (CPU total of the ranges), ops by self CPU time."""
    events = prof.key_averages()
    ranges = {e.key: e.cpu_time_total / 1e3 / steps for e in events if e.key.startswith(("phase/", "fwd/"))}
    ops = {
        e.key: round(e.self_cpu_time_total / 1e3 / steps, 3)
        for e in events
        if not e.key.startswith(("phase/", "fwd/", "ProfilerStep"))
    }
    by_shape: dict[str, float] = defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        if not e.key.startswith(("phase/", "fwd/")) and e.self_cpu_time_total > 0:
            by_shape[f"{e.key} {e.input_shapes}"] += e.self_cpu_time_total / 1e3 / steps
    top_shapes = dict(sorted(by_shape.items(), key=lambda kv: -kv[1])[:60])
    return {
        "phases_ms": {p: round(ranges.get(f"phase/{p}", 0.0), 2) for p in PHASES},
        "forward_by_module_ms": {
            k.removeprefix("fwd/"): round(v, 2) for k, v in sorted(ranges.items()) if k.startswith("fwd/")
        },
        "self_cpu_ms_by_op": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "self_cpu_ms_by_op_and_shape": {k: round(v, 3) for k, v in top_shapes.items()},
    }


def write_markdown(out: Path, report: dict[str, Any], reference: str | None) -> None:
    """``summary.md``: phases, forward categories, and the ops that differ most from ``reference``."""
    methods = list(report["methods"])
    lines = [f"# Step profile: {report['config']['describe']}", ""]
    lines += ["| phase (ms / step) | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p in (*PHASES, "wall"):
        key = "wall_ms" if p == "wall" else None
        vals = [report["methods"][m]["wall_ms"] if key else report["methods"][m]["phases_ms"][p] for m in methods]
        lines.append(f"| {p} | " + " | ".join(f"{v:,.1f}" for v in vals) + " |")
    cats = sorted({c for m in methods for c in report["methods"][m]["forward_by_module_ms"]})
    lines += ["", "| forward by module (ms / step, inclusive) | " + " | ".join(methods) + " |"]
    lines.append("|---|" + "---|" * len(methods))
    for c in cats:
        vals = [report["methods"][m]["forward_by_module_ms"].get(c, 0.0) for m in methods]
        lines.append(f"| {c} | " + " | ".join(f"{v:,.1f}" for v in vals) + " |")
    if reference is not None:
        ref_ops = report["methods"][reference]["self_cpu_ms_by_op"]
        for m in methods:
            if m == reference or bench.ROWS[m].floor:
                continue
            ops = report["methods"][m]["self_cpu_ms_by_op"]
            diff = {k: ops.get(k, 0.0) - ref_ops.get(k, 0.0) for k in set(ops) | set(ref_ops)}
            top = sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:20]
            lines += ["", f"## {m} - {reference}: ops with the largest self-time difference (ms / step)", ""]
            lines += [f"| op | {reference} | {m} | difference |", "|---|---|---|---|"]
            lines += [f"| `{k}` | {ref_ops.get(k, 0.0):,.1f} | {ops.get(k, 0.0):,.1f} | {d:+,.1f} |" for k, d in top]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for summary.json, summary.md, <method>_ops.txt")
    p.add_argument("--steps", type=int, default=1, help="profiled training steps per method (averaged)")
    p.add_argument("--warmup", type=int, default=1, help="untimed training steps of every method first")
    args, rest = p.parse_known_args(argv)
    if args.steps < 1 or args.warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    # the model options are the benchmark's own (--pair --tiny --methods --batch --rank --threads --dtype ...)
    bargs = bench_cli.parse_args([*rest, "--no-memory"])
    if len(bargs.batch) != 1:
        raise ValueError(f"--batch: profile one batch size at a time, got {bargs.batch}")
    if "--methods" not in rest:
        bargs.methods = [bench.FLOOR, REFERENCE_METHOD, PAPER_METHOD]
    return argparse.Namespace(**vars(bargs), out=args.out, prof_steps=args.steps, prof_warmup=args.warmup)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = bench.pair_spec(args.pair, tiny=args.tiny)
    runners = [bench.Runner(m, spec, args, device) for m in args.methods]
    for _ in range(args.prof_warmup):
        for r in runners:
            r.train_step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "config": {
            "describe": f"{args.pair} {'tiny' if args.tiny else 'full'} | {args.device} {args.dtype} | batch "
            f"{args.batch[0]} rank {args.rank} | {torch.get_num_threads()} threads | mean of {args.prof_steps} steps",
            "towers": spec.describe,
            "machine": bench.machine_info(device),
        },
        "methods": {},
    }
    for r in runners:
        handles = label_modules(r.model)
        with ExitStack() as stack:
            prof = stack.enter_context(profile(activities=activities, record_shapes=True))
            t0 = time.perf_counter()
            for _ in range(args.prof_steps):
                profiled_step(r)
            wall = (time.perf_counter() - t0) * 1e3 / args.prof_steps
        for h in handles:
            h.remove()
        report["methods"][r.method] = {"wall_ms": round(wall, 1), **summarise(prof, args.prof_steps)}
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=60, max_name_column_width=70)
        (args.out / f"{r.method}_ops.txt").write_text(table + "\n")
        print(f"{r.method}: {wall:,.0f} ms / step (profiled)", flush=True)
    reference = next((m for m in args.methods if not bench.ROWS[m].floor), None)
    (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(args.out, report, reference)
    print(f"wrote {args.out}/summary.md, summary.json, <method>_ops.txt")
    return report


if __name__ == "__main__":
    main()
