"""The demo's headline numbers over seeds, and the check that a fresh run still gives them.

``make check-demo`` (``python scripts/check_demo.py``) trains the demo (``python train.py``: CoLA on the synthetic
grounding set, tiny towers) for seeds 0-4, and the same runs with ``peft=frozen`` (towers frozen, the same head
trains), each into its own folder (an existing finished run is reused, so an interrupted check continues). It then
compares them with the numbers the README shows, which live in one file, :data:`STORED`
(``docs/demo_seeds.json``); the README's table is rendered from it (:func:`render_table`, checked by a test).

What the check asserts, per test split (testA, testB) of acc@0.5:

- every fresh CoLA seed lies within the stored seeds' range widened by one stored standard deviation (a seed's
  number moves by a few hundredths between machines: float32 sums in another order change the training path);
- every CoLA seed beats the fixed-box floor by :data:`FLOOR_MARGIN`.

Two targets are reported, not asserted, because the current recipe does not meet them (README "Two commands"):
the worst CoLA seed at least :data:`WORST_SEED_FLOOR` (0.5), and CoLA above the frozen towers of the same seed by
:data:`FROZEN_MARGIN` on the mean of the two test splits (:func:`unmet_targets`).

``--write`` stores a fresh summary as the new reference (after a deliberate recipe change) and re-renders the
README's table between its ``<!-- demo-seeds:start -->`` / ``<!-- demo-seeds:end -->`` markers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STORED = REPO / "docs" / "demo_seeds.json"
README = REPO / "README.md"
MARKERS = ("<!-- demo-seeds:start -->", "<!-- demo-seeds:end -->")
SPLITS = ("val", "testA", "testB")
TEST_SPLITS = ("testA", "testB")
METRIC = "acc@0.5"
METHODS = ("cola", "frozen")
"""The demo's methods: the one it trains (CoLA, ``make demo``) and the frozen towers it is compared with."""
DEMO, FROZEN = METHODS
WORST_SEED_FLOOR = 0.5
FROZEN_MARGIN = 0.1
FLOOR_MARGIN = 0.25


class DemoCheckError(RuntimeError):
    """A fresh demo run disagrees with the stored numbers (the message lists every disagreement)."""


class DemoArgumentError(DemoCheckError):
    """Bad arguments to :func:`check` (methods, seeds, the output folder), raised before anything trains."""


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / method / f"seed_{seed}"


def train(out: Path, method: str, seed: int, *, extra: Sequence[str] = ()) -> dict[str, float]:
    """Runs ``python train.py seed=<seed> peft=<method>`` into ``out/<method>/seed_<seed>`` (reused when that folder
    already holds a finished run) and returns its ``metrics.json``."""
    folder = run_dir(out, method, seed)
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        cmd = [sys.executable, str(REPO / "train.py"), f"seed={seed}", f"peft={method}", f"hydra.run.dir={folder}"]
        cmd += list(extra)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        t0 = time.time()
        print(f"[check-demo] {' '.join(cmd[1:])}", flush=True)
        log = out / f"{method}_seed_{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0 or not metrics.is_file():
            raise DemoCheckError(f"{method} seed {seed} failed (exit {done.returncode}); its log: {log}")
        print(f"[check-demo]   done in {time.time() - t0:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def summarise(runs: dict[str, dict[int, dict[str, float]]]) -> dict[str, Any]:
    """Per method and split: the per-seed acc@0.5, mean, sample std (n - 1), min, max; the fixed-box floor."""
    out: dict[str, Any] = {"metric": METRIC, "methods": {}}
    for method, by_seed in runs.items():
        seeds = sorted(by_seed)
        rows = {}
        for split in SPLITS:
            values = [float(by_seed[s][f"{split}/{METRIC}"]) for s in seeds]
            rows[split] = {
                "seeds": seeds,
                "values": [round(v, 4) for v in values],
                "mean": round(statistics.fmean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                "min": round(min(values), 4),
                "max": round(max(values), 4),
            }
        out["methods"][method] = rows
        first = by_seed[seeds[0]]
        floor = {s: first.get(f"{s}/{METRIC}_fixed_box") for s in SPLITS}
        if all(v is not None for v in floor.values()):
            out["floor"] = {s: round(float(v), 4) for s, v in floor.items()}
    return out


def compare(fresh: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """Every way ``fresh`` (a :func:`summarise` of new runs) breaks the stored reference; empty when it holds."""
    problems = []
    cola, ref = fresh["methods"][DEMO], stored["methods"][DEMO]
    for split in TEST_SPLITS:
        lo = ref[split]["min"] - ref[split]["std"]
        hi = ref[split]["max"] + ref[split]["std"]
        for seed, value in zip(cola[split]["seeds"], cola[split]["values"]):
            if not lo <= value <= hi:
                problems.append(
                    f"cola {split} seed {seed}: {value:.3f} outside the stored range widened by one std "
                    f"[{lo:.3f}, {hi:.3f}]"
                )
    floor = fresh.get("floor")
    if floor is not None:
        for split in TEST_SPLITS:
            if cola[split]["min"] <= floor[split] + FLOOR_MARGIN:
                problems.append(
                    f"cola {split}: worst seed {cola[split]['min']:.3f} not {FLOOR_MARGIN} above the fixed-box floor "
                    f"{floor[split]:.3f}"
                )
    return problems


def unmet_targets(summary: dict[str, Any]) -> list[str]:
    """The recipe's targets a summary misses: a CoLA seed under :data:`WORST_SEED_FLOOR`, a seed where CoLA does not
    beat the frozen towers by :data:`FROZEN_MARGIN` (mean of the test splits)."""
    unmet = []
    cola = summary["methods"][DEMO]
    for split in TEST_SPLITS:
        if cola[split]["min"] < WORST_SEED_FLOOR:
            unmet.append(f"cola {split}: worst seed {cola[split]['min']:.3f} < {WORST_SEED_FLOOR}")
    frozen = summary["methods"].get(FROZEN)
    if frozen is not None:
        for j, seed in enumerate(frozen["testA"]["seeds"]):
            if seed not in cola["testA"]["seeds"]:
                continue
            i = cola["testA"]["seeds"].index(seed)
            c = statistics.fmean(cola[s]["values"][i] for s in TEST_SPLITS)
            f = statistics.fmean(frozen[s]["values"][j] for s in TEST_SPLITS)
            if c < f + FROZEN_MARGIN:
                unmet.append(f"seed {seed}: cola {c:.3f} does not beat frozen {f:.3f} by {FROZEN_MARGIN}")
    return unmet


def render_table(summary: dict[str, Any]) -> str:
    """The README's Markdown table of a summary: per method, mean ± std and the worst seed per split."""
    names = {DEMO: "CoLA, r = 16 (`make demo`)", FROZEN: "frozen towers, same head (`peft=frozen`)"}
    lines = [
        "| run (seeds "
        + ", ".join(str(s) for s in summary["methods"][DEMO]["val"]["seeds"])
        + ") | "
        + " | ".join(f"{split} acc@0.5 mean ± std (worst)" for split in SPLITS)
        + " |",
        "|---|" + "---|" * len(SPLITS),
    ]
    if "floor" in summary:
        lines.append(
            "| one fixed box (the mean training box) | "
            + " | ".join(f"{summary['floor'][s]:.3f}" for s in SPLITS)
            + " |"
        )
    for method, rows in summary["methods"].items():
        cells = [f"{rows[s]['mean']:.3f} ± {rows[s]['std']:.3f} ({rows[s]['min']:.3f})" for s in SPLITS]
        lines.append(f"| {names.get(method, method)} | " + " | ".join(cells) + " |")
    short = {DEMO: "CoLA", FROZEN: "frozen"}
    lines.append("")
    lines.append(
        "Per seed, testA / testB: "
        + "; ".join(
            f"{short.get(method, method)} "
            + ", ".join(
                f"{seed}: {a:.3f} / {b:.3f}"
                for seed, a, b in zip(rows["testA"]["seeds"], rows["testA"]["values"], rows["testB"]["values"])
            )
            for method, rows in summary["methods"].items()
        )
        + "."
    )
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The text between the README's demo-seeds markers."""
    start, end = MARKERS
    if start not in text or end not in text:
        raise DemoCheckError(f"{README} lacks the markers {start} ... {end}")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")


def write_readme(summary: dict[str, Any], readme: Path = README) -> None:
    """Replaces whatever stands between the README's markers (possibly nothing) with the summary's table."""
    text = readme.read_text()
    readme_block(text)  # raises without the markers
    start, end = MARKERS
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(f"{head}{start}\n{render_table(summary)}\n{end}{tail}")


def check(
    out: Path,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = METHODS,
    *,
    write: bool = False,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs (or reuses) the demo for every method and seed, compares with :data:`STORED` and returns the fresh
    summary; with ``write`` stores it and re-renders the README instead of comparing.

    Raises:
        DemoArgumentError: bad methods, seeds or ``out`` (raised before any run).
        DemoCheckError: a run failed, or the fresh numbers break the stored ones (every problem listed).
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or DEMO not in methods:
        raise DemoArgumentError(f"methods must include {DEMO} and be among {list(METHODS)}, got {list(methods)}")
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise DemoArgumentError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
    if out.exists() and not out.is_dir():
        raise DemoArgumentError(f"--out {out} is a file; it must be a folder (created when missing) for the runs")
    runs = {m: {s: train(out, m, s, extra=extra) for s in seeds} for m in methods}
    fresh = summarise(runs)
    (out / "summary.json").write_text(json.dumps(fresh, indent=2) + "\n")
    print(render_table(fresh))
    if write:
        STORED.write_text(json.dumps(fresh, indent=2) + "\n")
        write_readme(fresh)
        print(f"[check-demo] stored {STORED} and re-rendered the README's table")
        return fresh
    problems = compare(fresh, json.loads(STORED.read_text()))
    for line in unmet_targets(fresh):
        print(f"[check-demo] target not met (reported, not checked): {line}")
    if problems:
        raise DemoCheckError("the demo no longer gives the README's numbers:\n  " + "\n  ".join(problems))
    print("[check-demo] OK: the fresh runs agree with the README's numbers")
    return fresh
