"""The benchmark report: ratios, FLOP floors, the memory account, machine load, tables and the plot.

A time ratio ``X/Y`` comes with the FLOP ratio of the same pair (what the ratio would be if every counted op ran
at the same speed) and the overhead above it (time ratio / FLOP ratio: 1.0 = X runs its extra work as fast as Y
runs its own; above 1 = small or elementwise ops, launches, the optimiser's per-tensor work cost more than their
FLOPs). The FLOP count covers matrix products, convolutions and attention only, so the floor is a lower bound.
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from cola.peft import PAPER_METHOD, REFERENCE_METHOD

from .config import INTRA, MATCHED, ROWS, variant_row
from .measure import paired_ratio_spread


def _ratio_pairs() -> list[tuple[str, str]]:
    """Every other adapter row of its own (no intra variant, not derived, not HF peft's) over the paper's reference,
    the paper method's rows first; our LoRA over HF peft's; the paper's method over the derived (parameter-matched)
    LoRA; each intra variant's reference row over the reference, its paper-method row over that row and over the
    reference."""
    ref, paper = REFERENCE_METHOD, PAPER_METHOD
    rows = ROWS.values()
    own = [r for r in rows if r.method.injects and r.method.parses_as is None and not r.intra and not r.hf_peft]
    pairs = [(r.name, ref) for r in sorted(own, key=lambda r: r.peft != paper) if r is not ROWS[ref]]
    pairs += [(ref, r.name) for r in rows if r.hf_peft]
    pairs += [(paper, r.name) for r in rows if r.method.derive is not None]
    pairs += [(variant_row(ref, v), ref) for v in INTRA]
    pairs += [(variant_row(paper, v), variant_row(ref, v)) for v in INTRA]
    pairs += [(variant_row(paper, v), ref) for v in INTRA]
    return pairs


RATIO_PAIRS = _ratio_pairs()
"""(numerator, denominator) of every reported ratio, when both methods ran."""
PAPER_RATIO = f"{PAPER_METHOD}/{REFERENCE_METHOD}"
"""The paper's ratio, ``cola/lora``."""
MATCHED_RATIO = f"{PAPER_METHOD}/{MATCHED}"
"""The ratio at equal trainable parameters, ``cola/lora_param_matched``."""
ADAMW_BYTES_PER_PARAM = 3 * 4  # an fp32 gradient and AdamW's two fp32 moments per trainable parameter


def _ratio(num: float | None, den: float | None) -> float | None:
    """num / den rounded, ``None`` when a value was not measured or the denominator is zero."""
    if num is None or den is None or den <= 0:
        return None
    return round(num / den, 4)


def compute_ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The ratios of :data:`RATIO_PAIRS` (``cola/lora``, ``moka/lora``, ``lora/peft_lora``, ``cola/lora_param_matched``:
    equal trainable parameters, hence equal gradient and AdamW memory, ...) for the methods that were run (one batch
    size)."""
    by = {r["method"]: r for r in results}
    ratios = {}
    for num, den in RATIO_PAIRS:
        if num in by and den in by:
            ratios[f"{num}/{den}"] = {
                key: _ratio(by[num][field_], by[den][field_])
                for key, field_ in (("train_step", "train_step_ms"), ("eval", "eval_ms"), ("peak_mem", "peak_mem_mb"))
            }
    return ratios


def compute_flop_ratios(flops: dict[str, dict[str, int]], ratios: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For every pair of ``ratios``: the FLOP ratio of its train step and eval forward, and the time ratio's
    overhead above it (``<key>_overhead`` = time ratio / FLOP ratio)."""
    out: dict[str, Any] = {}
    for name, ratio in ratios.items():
        num, den = name.split("/")
        if num not in flops or den not in flops:
            continue
        entry: dict[str, float | None] = {}
        for key, kind in (("train_step", "train"), ("eval", "eval")):
            floor = _ratio(flops[num][kind], flops[den][kind])
            entry[key] = floor
            entry[f"{key}_overhead"] = _ratio(ratio.get(key), floor)
        out[name] = entry
    return out


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


def memory_account(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Where CoLA's extra peak training memory over LoRA goes (one batch size), or ``None`` without both.

    CoLA trains its hypernetworks on top of LoRA's matrices; each trainable parameter holds an fp32 gradient and
    AdamW's two fp32 moments during the step, so ``extra_params x 12 bytes`` of the measured difference is optimiser
    state that does not grow with the batch. ``lora_param_matched`` trains as many parameters as CoLA: its ratio is
    the comparison at equal optimiser state.
    """
    by = {r["method"]: r for r in results}
    if PAPER_METHOD not in by or REFERENCE_METHOD not in by:
        return None
    cola, lora = by[PAPER_METHOD], by[REFERENCE_METHOD]
    extra = cola["params_trainable"] - lora["params_trainable"]
    diff = None
    if cola["peak_mem_mb"] is not None and lora["peak_mem_mb"] is not None:
        diff = round(cola["peak_mem_mb"] - lora["peak_mem_mb"], 1)
    account: dict[str, Any] = {
        "extra_params": extra,
        "extra_adamw_state_mb": round(extra * ADAMW_BYTES_PER_PARAM / 2**20, 1),
        "peak_mem_diff_mb": diff,
        PAPER_RATIO: _ratio(cola["peak_mem_mb"], lora["peak_mem_mb"]),
        MATCHED_RATIO: None,
    }
    if MATCHED in by:
        account[MATCHED_RATIO] = _ratio(cola["peak_mem_mb"], by[MATCHED]["peak_mem_mb"])
    return account


def memory_sentence(account: dict[str, Any] | None) -> str | None:
    """The memory account in one sentence (the table's caption)."""
    if account is None:
        return None
    text = (
        f"CoLA trains {account['extra_params']:,} parameters more than LoRA (the hypernetworks): their gradients and "
        f"AdamW moments are {account['extra_adamw_state_mb']:.1f} MB"
    )
    if account["peak_mem_diff_mb"] is not None:
        text += f" of the {account['peak_mem_diff_mb']:.1f} MB extra peak ({PAPER_RATIO} {account[PAPER_RATIO]:.3f})"
    if account[MATCHED_RATIO] is not None:
        text += (
            f"; at equal trainable parameters ({MATCHED}, the fair comparison) {MATCHED_RATIO} "
            f"{account[MATCHED_RATIO]:.3f}"
        )
    return text + "."


# ----------------------------------------------------------------------------------------------------- load
def competing_load(samples: list[float], threads: int) -> float:
    """The load other processes put on the machine while we ran: the median 1-min load average over the timed rounds
    less our own torch threads (never below 0)."""
    if not samples:
        return 0.0
    return round(max(0.0, statistics.median(samples) - threads), 2)


def is_loaded(load_start: float, competing: float, *, cpus: int, threads: int) -> bool:
    """Whether other processes competed for the cores our threads need: the load before we started, or the others'
    load while we ran, above the cores we left free (+0.5). On CPU such runs overstate the cost of small ops (each
    may wait a scheduler slice for an OpenMP barrier), so their time ratios are not to be trusted."""
    free = cpus - threads + 0.5
    return load_start > free or competing > free


def load_warning(machine: dict[str, Any]) -> str | None:
    """The table's header line of a loaded machine, ``None`` on a quiet one (or on a GPU run)."""
    if not machine.get("loaded"):
        return None
    return (
        f"LOADED MACHINE: load average {machine.get('load_average_start', 0):.1f} at start, other processes' load "
        f"{machine.get('competing_load', 0):.1f} while timing, on {machine.get('cpu_count')} cores with "
        f"{machine.get('torch_threads')} torch threads: time ratios and overheads are not to be trusted"
    )


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


# ----------------------------------------------------------------------------------------------------- tables
def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_tables(report: dict[str, Any], *, width: int = 160) -> str:
    """The report as text tables: per batch size the methods (medians [p25-p75], GFLOPs, ratios to ``lora``), then
    every ratio by batch size beside its FLOP floor and the overhead above it, then the memory account. A loaded
    machine's run says so in each table's title."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    cfg = report["config"]
    warning = load_warning(cfg.get("machine", {}))
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=False, color_system=None)
    batches = sorted({r["batch"] for r in report["results"]})
    head = f"{cfg['pair']} {'tiny' if cfg['tiny'] else 'full'} | {cfg['device']} {cfg['dtype']}"
    head += " compiled" if cfg["compile"] else ""
    if warning:
        console.print(escape(warning), soft_wrap=True)
    for batch in batches:
        rows = [r for r in report["results"] if r["batch"] == batch]
        title = f"{head} | batch {batch} rank {cfg['rank']} | median of {cfg['steps']} steps [p25-p75]"
        if warning:
            title += " | LOADED MACHINE: not to be trusted"
        table = Table(title=escape(title))
        cols = ("method", "train step ms", "eval ms", "peak mem MB", "trainable params", "train GFLOP", "eval GFLOP")
        for col in (*cols, f"train/{REFERENCE_METHOD}", f"eval/{REFERENCE_METHOD}"):
            table.add_column(col, justify="left" if col == "method" else "right")
        lora = next((r for r in rows if r["method"] == REFERENCE_METHOD), None)
        for r in rows:
            rel = ("-", "-")
            if lora is not None:
                rel = tuple(f"{r[k] / lora[k]:.3f}" for k in ("train_step_ms", "eval_ms"))
            iq = {k: r.get(f"{k}_iqr") for k in ("train_step_ms", "eval_ms")}
            cell = {k: f"{r[k]:.1f}" + (f" [{iq[k][0]:.0f}-{iq[k][1]:.0f}]" if iq[k] else "") for k in iq}
            flops = [r.get(k) for k in ("train_flops", "eval_flops")]
            table.add_row(
                *map(
                    escape,
                    (
                        r["method"],
                        cell["train_step_ms"],
                        cell["eval_ms"],
                        _fmt(r["peak_mem_mb"], 1),
                        f"{r['params_trainable']:,}",
                        *("-" if f is None else f"{f / 1e9:.2f}" for f in flops),
                        *rel,
                    ),
                )
            )
        console.print(table)
    by_batch = report.get("ratios_by_batch") or {str(batches[-1]): report["ratios"]}
    flop_by_batch = report.get("flop_ratios_by_batch", {})
    spreads = report.get("spread_by_batch", {})
    if any(by_batch.values()):
        title = "ratios (num / den): time ratio [p25-p75 of per-round ratios], FLOP floor, overhead = time / FLOP"
        rt = Table(title=escape(title + (" | LOADED MACHINE: not to be trusted" if warning else "")))
        cols = ("pair", "batch", "train_step", "train FLOP", "overhead", "eval", "eval FLOP", "overhead ", "peak_mem")
        for col in cols:
            rt.add_column(col, justify="left" if col == "pair" else "right")
        if warning:
            rt.add_column("trusted", justify="left")
        for batch in batches:
            for name, v in by_batch[str(batch)].items():
                sp = spreads.get(str(batch), {}).get(name, {})
                fl = flop_by_batch.get(str(batch), {}).get(name, {})
                cells = []
                for k in ("train_step", "eval"):
                    text = _fmt(v[k])
                    if sp.get(k):
                        text += f" [{sp[k][0]:.2f}-{sp[k][2]:.2f}]"
                    cells += [text, _fmt(fl.get(k)), _fmt(fl.get(f"{k}_overhead"))]
                rt.add_row(
                    *map(escape, (name, str(batch), *cells)), _fmt(v["peak_mem"]), *(["no (loaded)"] if warning else [])
                )
        console.print(rt)
    for batch in batches:
        sentence = memory_sentence(report.get("memory_by_batch", {}).get(str(batch)))
        if sentence:
            console.print(escape(f"memory, batch {batch}: {sentence}"), soft_wrap=True)
    return buf.getvalue()


def print_table(report: dict[str, Any]) -> None:
    """Prints :func:`render_tables` (wide on a terminal)."""
    import shutil

    width = shutil.get_terminal_size((160, 40)).columns if sys.stdout.isatty() else 160
    sys.stdout.write(render_tables(report, width=max(width, 120)))
    sys.stdout.flush()


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
