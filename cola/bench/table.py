"""The README's performance table, generated from stored benchmark reports (``docs/benchmarks/bench_*.json``).

``scripts/benchmark_table.py`` writes :func:`markdown_table` between the :data:`START` and :data:`END` markers of
README.md (``--check``: only compares). One row per run and batch size: CoLA / LoRA time ratios beside their FLOP
floor and the overhead above it, the memory ratios (against LoRA and against the parameter-matched LoRA, the
comparison at equal optimiser state) and the machine's load, with runs taken on a loaded machine marked as not to
be trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .report import MATCHED_RATIO, PAPER_RATIO

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
HEADER = (
    "| run | batch | CoLA / LoRA train [per-round IQR] | FLOP floor | overhead | eval | FLOP floor | overhead "
    "| peak mem / LoRA | peak mem / param-matched LoRA | load: start, others | trusted |"
)


def _f(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _run_name(cfg: dict[str, Any]) -> str:
    shape = "tiny" if cfg["tiny"] else "full"
    return f"{cfg['pair']} {shape}, {cfg['device']} {cfg['dtype']}, {'compiled' if cfg['compile'] else 'eager'}"


def _sort_key(item: tuple[Path, dict[str, Any]]) -> tuple:
    cfg = item[1]["config"]
    return (("vl", "av").index(cfg["pair"]) if cfg["pair"] in ("vl", "av") else 9, cfg["tiny"], cfg["device"],
            cfg["dtype"], cfg["compile"], item[0].name)  # fmt: skip


def load_reports(paths: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The reports at ``paths`` that carry FLOP counts (older runs predate them), in table order."""
    reports = []
    for path in paths:
        report = json.loads(Path(path).read_text())
        if "flop_ratios_by_batch" in report:
            reports.append((Path(path), report))
    return sorted(reports, key=_sort_key)


def markdown_table(reports: list[tuple[Path, dict[str, Any]]], *, relative_to: Path) -> str:
    """The table (header, rule, one row per run and batch size) with each run linked relative to ``relative_to``."""
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for path, report in reports:
        cfg = report["config"]
        machine = cfg.get("machine", {})
        link = Path(os.path.relpath(Path(path).resolve(), Path(relative_to).resolve())).as_posix()
        load = f"{machine.get('load_average_start', 0):.1f}, {machine.get('competing_load', 0):.1f}"
        trusted = "no (loaded)" if machine.get("loaded") else "yes"
        for batch in cfg["batch"]:
            b = str(batch)
            ratio = report["ratios_by_batch"][b].get(PAPER_RATIO)
            if ratio is None:
                continue
            floor = report["flop_ratios_by_batch"][b].get(PAPER_RATIO, {})
            spread = report.get("spread_by_batch", {}).get(b, {}).get(PAPER_RATIO, {}).get("train_step")
            train = _f(ratio["train_step"]) + (f" [{spread[0]:.2f}-{spread[2]:.2f}]" if spread else "")
            matched = report["ratios_by_batch"][b].get(MATCHED_RATIO, {})
            cells = [
                f"[{_run_name(cfg)}]({link})",
                b,
                train,
                _f(floor.get("train_step")),
                _f(floor.get("train_step_overhead")),
                _f(ratio["eval"]),
                _f(floor.get("eval")),
                _f(floor.get("eval_overhead")),
                _f(ratio["peak_mem"]),
                _f(matched.get("peak_mem")),
                load,
                trusted,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_between_markers(text: str, table: str) -> str:
    """``text`` with everything between :data:`START` and :data:`END` replaced by ``table``.

    Raises:
        ValueError: a marker is missing or out of order.
    """
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README must hold the markers {START} and {END} (in this order) around the table")
    return text[: start + len(START)] + "\n" + table + "\n" + text[end:]
