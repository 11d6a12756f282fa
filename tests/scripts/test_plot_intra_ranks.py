"""scripts/plot_intra_ranks.py: the final rank of every layer from a run's rank budget, runs side by side."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_intra_ranks.py"


@pytest.fixture(scope="module")
def plot_ranks():
    spec = importlib.util.spec_from_file_location("plot_intra_ranks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _budget(shift: int) -> dict:
    ranks = {
        "encoder.towers.vision.model.blocks.0.attn.qkv": [4, 3 - shift, 2],
        "encoder.towers.vision.model.blocks.1.mlp.fc1": [1 + shift],
        "encoder.towers.text.model.encoder.layer.0.attention.self.query": [3],
    }
    total = sum(sum(r) for r in ranks.values())
    return {"intra": "adalora", "initial_rank": 4, "target_rank": 3, "matrices": 5, "ranks": ranks,
            "budget": {"initial": 20, "target": 15, "final": total}}  # fmt: skip


def test_plots_two_runs_and_writes_their_profiles(plot_ranks, tmp_path):
    paths = []
    for i, shift in enumerate((0, 1)):
        paths.append(tmp_path / f"run{i}" / "adapter.ranks.json")
        paths[-1].parent.mkdir()
        paths[-1].write_text(json.dumps(_budget(shift)))
    out, js = tmp_path / "ranks.png", tmp_path / "ranks.json"
    argv = [*map(str, paths), "--labels", "LoRA-AdaLoRA", "CoLA-AdaLoRA", "--out", str(out), "--json", str(js)]
    assert plot_ranks.main(argv) == 0
    assert out.stat().st_size > 0
    profiles = json.loads(js.read_text())  # a fused qkv layer is q, k, v; blocks by depth
    assert profiles["LoRA-AdaLoRA"]["vision"] == {"q": {"0": 4}, "k": {"0": 3}, "v": {"0": 2}, "fc1": {"1": 1}}
    assert profiles["CoLA-AdaLoRA"]["vision"]["k"] == {"0": 2} and profiles["CoLA-AdaLoRA"]["text"] == {"q": {"0": 3}}


def test_an_adapter_without_a_budget_is_named(plot_ranks, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    save_file({"x.lora_A": torch.zeros(1)}, str(tmp_path / "adapter.safetensors"))
    assert plot_ranks.main([str(tmp_path)]) == 2
    assert "holds no rank budget (cola.intra_ranks)" in capsys.readouterr().err
