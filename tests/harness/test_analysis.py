"""compare_runs.py, plot_lambda.py and the interference probes / CKA of cola.analysis."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from cola.analysis import lambda_values, linear_cka, probe_values
from cola.peft import CoLAConfig, inject_adapters, save_adapters

REPO = Path(__file__).resolve().parents[2]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


VALUES = {"lora": [0.50, 0.54, 0.52], "cola": [0.60, 0.62, 0.64], "frozen": [0.30, 0.31, 0.32]}
PARAMS = {"lora": 1000, "cola": 1500, "frozen": 10}


@pytest.fixture()
def multirun(tmp_path) -> Path:
    """A fake multirun folder: 3 methods x 3 seeds with known metrics, plus one unfinished job."""
    job = 0
    for method, values in VALUES.items():
        for seed, v in enumerate(values):
            d = tmp_path / str(job)
            d.mkdir()
            cfg = {"seed": seed, "peft": {"method": method, "rank": 8, "sharing": "none", "propagation": "progressive"}}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            (d / "metrics.json").write_text(
                json.dumps({"testA/acc@0.5": v, "val/acc@0.5": v / 2, "params/trainable": PARAMS[method]})
            )
            job += 1
    (tmp_path / str(job)).mkdir()  # a job that did not finish: no metrics.json
    return tmp_path


def test_compare_runs_means_stds_gain_and_plots(multirun, capsys):
    mod = _script("compare_runs")
    assert mod.main([str(multirun), "--metric", "testA/acc@0.5"]) == 0
    rows = list(__import__("csv").DictReader((multirun / "comparison.csv").open()))
    by = {r["method"]: r for r in rows}
    for method, values in VALUES.items():
        assert float(by[method]["testA/acc@0.5 mean"]) == pytest.approx(statistics.fmean(values))
        assert float(by[method]["testA/acc@0.5 std"]) == pytest.approx(statistics.stdev(values))
        assert int(by[method]["seeds"]) == 3 and int(by[method]["params/trainable"]) == PARAMS[method]
    assert float(by["cola"]["testA/acc@0.5 gain vs lora"]) == pytest.approx(0.62 - 0.52)
    md = (multirun / "comparison.md").read_text()
    assert "62.00 ± 2.00" in md and "+10.00" in md
    for png in ("comparison_bar.png", "comparison_params.png"):
        assert (multirun / png).stat().st_size > 1000
    assert [r["method"] for r in rows] == ["frozen", "lora", "cola"]


def test_compare_runs_errors(tmp_path, multirun, capsys):
    mod = _script("compare_runs")
    assert mod.main([str(tmp_path / "missing")]) == 2
    assert mod.main([str(multirun), "--metric", "nope/acc"]) == 2
    assert "not found; available" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no finished run"):
        mod.main([str(multirun / "9")])


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(8, 24), nn.Linear(8, 8)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)


def _cola_model(seed=0):
    torch.manual_seed(seed)
    model = nn.Module()
    model.encoder = nn.Module()
    model.encoder.towers = nn.ModuleDict({"vision": nn.Module()})
    model.encoder.towers.vision.model = nn.Module()
    model.encoder.towers.vision.model.blocks = nn.ModuleList([_Block(), _Block()])
    report = inject_adapters(
        model,
        CoLAConfig(rank=2, reduction=2, lambda_init=0.1),
        ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
        context_dim=4,
        out_splits={"attn.qkv": 3},
    )
    return model, report


def test_plot_lambda_from_adapter_file(tmp_path):
    model, report = _cola_model()
    with torch.no_grad():
        report.modules["encoder.towers.vision.model.blocks.1.attn.qkv"].cola_lambda.copy_(torch.tensor([0.5, 0.6, 0.7]))
    path = save_adapters(tmp_path / "adapter.safetensors", model)
    mod = _script("plot_lambda")
    assert mod.main([str(path), "--json", str(tmp_path / "l.json")]) == 0
    assert (tmp_path / "lambda.png").stat().st_size > 1000
    values = json.loads((tmp_path / "l.json").read_text())["vision"]
    assert values["k"] == {"0": pytest.approx(0.1), "1": pytest.approx(0.6)}
    assert set(values) == {"q", "k", "v", "o", "fc1", "fc2"}
    assert mod.main([str(tmp_path / "none.safetensors")]) == 2


def test_probes_are_finite_and_cosines_in_range():
    model, report = _cola_model()
    for layer in report.modules.values():
        with torch.no_grad():
            layer.lora_B.normal_()
            layer.cola_B.normal_()
        layer.set_condition(torch.randn(3, 4))
    x = torch.randn(3, 5, 8)
    loss = sum(m(x if m.in_features == 8 else torch.randn(3, 5, 16)).square().mean() for m in report.modules.values())
    loss.backward()
    values = probe_values(model)
    assert len([k for k in values if k.endswith("grad_intra")]) == 8
    assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    assert all(-1.0 <= v <= 1.0 for k, v in values.items() if "/cos_" in k)
    assert lambda_values(model)["vision.blocks.0.attn.qkv"] == pytest.approx([0.1, 0.1, 0.1])


def test_linear_cka_properties():
    torch.manual_seed(0)
    x = torch.randn(64, 10)
    q, _ = torch.linalg.qr(torch.randn(10, 10))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0, abs=1e-6)  # invariant to rotation and scale
    assert linear_cka(x, torch.randn(64, 7)) < 0.5
