"""scripts/gpu_check.sh: valid bash, and a clean skip (exit 0, a JSON saying why) where torch sees no CUDA."""

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
