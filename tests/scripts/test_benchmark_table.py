"""scripts/benchmark_table.py: README.md's performance table is generated from the stored runs in docs/benchmarks/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from cola.bench.table import END, START, load_reports, markdown_table, replace_between_markers

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "benchmark_table.py"
RUNS = sorted((REPO / "docs" / "benchmarks").glob("bench_*.json"))


def _generated(readme: str) -> str:
    return replace_between_markers(readme, markdown_table(load_reports(RUNS), relative_to=REPO))


def test_readme_table_is_the_stored_runs():
    """The README's table equals the one generated from the stored runs, character for character."""
    readme = (REPO / "README.md").read_text()
    assert _generated(readme) == readme
    table = readme[readme.index(START) : readme.index(END)]
    rows = [ln for ln in table.splitlines() if ln.startswith("| [")]
    # vl and av runs, every stored run's batch sizes, each row linking its JSON
    assert {"vl", "av"} <= {re.match(r"\| \[(\w+)", r).group(1) for r in rows}
    reports = load_reports(RUNS)
    assert len(rows) == sum(len(rep["config"]["batch"]) for _, rep in reports)
    for path, _ in reports:
        assert f"]({path.relative_to(REPO).as_posix()})" in table


def test_a_typed_edit_is_caught():
    readme = (REPO / "README.md").read_text()
    start = readme.index(START)
    row = readme.index("| [", start)
    cell = re.compile(r"\d\.\d{3}").search(readme, row)  # the first ratio of the first row
    edited = readme[: cell.start()] + ("9.999" if cell.group() != "9.999" else "1.111") + readme[cell.end() :]
    assert _generated(edited) != edited
    assert _generated(edited) == readme


def test_markers_are_required():
    with pytest.raises(ValueError, match="bench:start"):
        replace_between_markers("no markers here", "| table |")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_checks_and_outputs(tmp_path):
    proc = _cli("--check")
    assert proc.returncode == 0 and "matches" in proc.stdout, proc.stdout + proc.stderr
    readme = tmp_path / "README.md"
    readme.write_text((REPO / "README.md").read_text())
    runs = [str(p) for p in RUNS]
    assert _cli(*runs, "--readme", str(readme)).returncode == 0  # links now relative to tmp_path
    assert _cli(*runs, "--readme", str(readme), "--check").returncode == 0
    text = readme.read_text()
    cell = re.compile(r"\d\.\d{3}").search(text, text.index("| [", text.index(START)))  # the first row's ratio
    edited = text[: cell.start()] + ("9.999" if cell.group() != "9.999" else "1.111") + text[cell.end() :]
    readme.write_text(edited)
    proc = _cli(*runs, "--readme", str(readme), "--check")
    assert proc.returncode == 1 and "differs" in proc.stderr
    assert readme.read_text() == edited  # --check writes nothing
    out = tmp_path / "gpu" / "bench_table.md"
    proc = _cli(*runs, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines()[0].startswith("| run | batch | CoLA / LoRA train")
