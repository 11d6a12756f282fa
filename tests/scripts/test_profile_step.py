"""scripts/profile_step.py: a training step's time by phase, by forward module category and by op, per method."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "profile_step.py"


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("cola_profile_step_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("prof")
    threads = torch.get_num_threads()
    try:
        module.main(["--tiny", "--batch", "2", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "summary.json").read_text())


def test_every_method_gets_phases_modules_and_ops(summary):
    out, report = summary
    assert list(report["methods"]) == ["frozen", "lora", "cola"]  # the default methods
    for method, res in report["methods"].items():
        phases = res["phases_ms"]
        assert set(phases) == {"forward", "backward", "optimizer"} and all(v > 0 for v in phases.values())
        assert sum(phases.values()) <= res["wall_ms"] * 1.05  # the phases lie inside the step
        assert res["self_cpu_ms_by_op"] and res["self_cpu_ms_by_op_and_shape"]
        assert (out / f"{method}_ops.txt").read_text().count("\n") > 10
    cats = {m: set(r["forward_by_module_ms"]) for m, r in report["methods"].items()}
    assert "hypernet" in cats["cola"] and "hypernet" not in cats["lora"]
    assert {"adapter", "base_linear"} <= cats["lora"] and "adapter" not in cats["frozen"]
    assert {"other_linear", "norm"} <= cats["frozen"]  # the frozen towers: plain linears, norms
    md = (out / "summary.md").read_text()
    assert "| phase (ms / step) | frozen | lora | cola |" in md and "## cola - lora" in md


def test_one_batch_size_at_a_time(tmp_path):
    spec = importlib.util.spec_from_file_location("cola_profile_step_args", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="one batch size"):
        module.parse_args(["--tiny", "--batch", "1", "4", "--out", str(tmp_path)])
