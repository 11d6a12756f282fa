"""scripts/gpu_check.sh: valid bash, a clean skip (exit 0, a JSON saying why) where torch sees no CUDA, and the
report (per-step console lines, the summary, gpu_check.json, the exit code) driven by stand-in steps without CUDA."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    else:
        env = dict(os.environ)
    env["PY"] = sys.executable
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout
    assert json.loads((out / "gpu_check.json").read_text()) == {"skipped": "no CUDA device visible to torch"}
    assert not (out / "runs").exists()  # nothing ran


def _fake_check(tmp_path: Path, steps: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Runs the script with stand-in steps (``GPU_CHECK_FAKE_STEPS``): the real step recording and report, no CUDA."""
    env = {**os.environ, "PY": sys.executable, "GPU_CHECK_FAKE_STEPS": steps}
    out = tmp_path / "check"
    proc = subprocess.run(["bash", str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=120)
    return proc, out


def test_report_names_passed_failed_and_no_tests_collected(tmp_path):
    proc, out = _fake_check(tmp_path, "gpu_tests=5 fast_bf16=1 bench_bf16=0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # one line per step as it ends, each naming its state (and a failure its reason and exit status)
    step_lines, summary = lines[:3], lines[3:]
    assert step_lines[0].startswith("gpu_check: gpu_tests FAILED: pytest collected no gpu-marked tests")
    assert "(rc=5," in step_lines[0]
    assert step_lines[1].startswith("gpu_check: fast_bf16 FAILED: exited with status 1") and "(rc=1," in step_lines[1]
    assert step_lines[2].startswith("gpu_check: bench_bf16 passed (")
    # the summary names every failed step with its reason, then the report file
    assert summary[0] == "gpu_check: FAILED 2 of 3 steps: gpu_tests, fast_bf16"
    assert summary[1].startswith("gpu_check:   gpu_tests FAILED: pytest collected no gpu-marked tests")
    assert summary[1].endswith("(rc=5)")
    assert summary[2].startswith("gpu_check:   fast_bf16 FAILED: exited with status 1") and summary[2].endswith(
        "(rc=1)"
    )
    assert summary[3] == f"gpu_check: report {out / 'gpu_check.json'}, log {out / 'gpu_check.log'}"
    assert len(summary) == 4
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] is False and report["fake_steps"] is True
    assert list(report["steps"]) == ["gpu_tests", "fast_bf16", "bench_bf16"]
    steps = report["steps"]
    assert steps["gpu_tests"]["rc"] == 5 and steps["gpu_tests"]["status"] == "failed"
    assert steps["gpu_tests"]["reason"].startswith("pytest collected no gpu-marked tests")
    assert steps["fast_bf16"]["rc"] == 1 and steps["fast_bf16"]["status"] == "failed"
    assert steps["fast_bf16"]["reason"].startswith("exited with status 1")
    # the reason quotes the step's last output line
    assert "last output: fake step fast_bf16 exiting with status 1" in steps["fast_bf16"]["reason"]
    assert steps["bench_bf16"] == {
        "rc": 0,
        "seconds": steps["bench_bf16"]["seconds"],
        "status": "passed",
        "reason": None,
    }
    assert report["failed"] == {n: steps[n]["reason"] for n in ("gpu_tests", "fast_bf16")}
    # the log holds the same lines; steps.tsv one row per step with the reason
    log = (out / "gpu_check.log").read_text()
    assert "gpu_check: gpu_tests FAILED: pytest collected no gpu-marked tests" in log
    assert "gpu_check: FAILED 2 of 3 steps: gpu_tests, fast_bf16" in log
    rows = [line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()]
    assert [(r[0], r[1], r[3].split(";")[0]) for r in rows] == [
        ("gpu_tests", "5", "pytest collected no gpu-marked tests"),
        ("fast_bf16", "1", "exited with status 1"),
        ("bench_bf16", "0", ""),
    ]


def test_report_tells_a_gpu_test_failure_from_no_tests_collected(tmp_path):
    proc, out = _fake_check(tmp_path, "gpu_tests=1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "gpu_check: gpu_tests FAILED: gpu-marked tests failed" in proc.stdout
    assert "collected no" not in proc.stdout
    assert json.loads((out / "gpu_check.json").read_text())["steps"]["gpu_tests"]["reason"].startswith(
        "gpu-marked tests failed"
    )


def test_report_passes_when_every_step_passes(tmp_path):
    proc, out = _fake_check(tmp_path, "gpu_tests=0 ddp_1gpu=0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu_check: all 2 steps passed" in proc.stdout.splitlines()
    assert "FAILED" not in proc.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] is True and report["failed"] == {}
    assert report["bench_table"] is None  # no benchmark ran: no table (scripts/benchmark_table.py --out)
    assert {n: s["status"] for n, s in report["steps"].items()} == {"gpu_tests": "passed", "ddp_1gpu": "passed"}


def test_report_names_a_killed_step(tmp_path):
    proc, _ = _fake_check(tmp_path, "real_bf16=137")
    assert proc.returncode == 1
    assert "gpu_check: real_bf16 FAILED: killed by signal 9 (SIGKILL: out of memory?)" in proc.stdout


def test_fake_steps_must_be_name_equals_status(tmp_path):
    proc, out = _fake_check(tmp_path, "gpu_tests=five")
    assert proc.returncode == 2
    assert "'gpu_tests=five' is not NAME=RC" in proc.stderr
    assert not (out / "gpu_check.json").exists()
