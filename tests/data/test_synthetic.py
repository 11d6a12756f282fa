"""The harness builds a task's synthetic set and the model's assets by calling the configured library builders."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from cola import harness
from cola.validation import SetupError
from tests.conftest import compose_cfg


def test_null_data_root_builds_the_task_synthetic_set_once(tmp_path, caplog):
    cfg = compose_cfg(
        [
            "task=avs_s4",
            f"paths.data_dir={tmp_path}",
            "task.synthetic.builder.num_s4=3",
            "task.synthetic.builder.num_ms3=3",
        ]
    )
    caplog.set_level("INFO", logger="cola.harness")
    harness.resolve_data_root(cfg)
    root = tmp_path / "synthetic_avs"
    assert cfg.data.root == str(root) and (root / cfg.task.synthetic.marker).is_file()
    assert json.loads((root / "synthetic.json").read_text())["params"]["num_s4"] == 3
    assert "cola.data.synthetic.make_synthetic_avs(" in caplog.text and "num_s4=3" in caplog.text
    again = compose_cfg(["task=avs_s4", f"paths.data_dir={tmp_path}", "task.synthetic.builder.num_s4=4"])
    harness.resolve_data_root(again)  # the marker exists: nothing is rebuilt, whatever the builder says
    assert json.loads((root / "synthetic.json").read_text())["params"]["num_s4"] == 3


def test_a_failing_builder_is_a_setup_error_naming_it(tmp_path):
    cfg = compose_cfg(["task=avs_s4", f"paths.data_dir={tmp_path}", "task.synthetic.builder.num_s4=2"])
    with pytest.raises(SetupError, match=r"synthetic avs_s4 set.*ValueError.*make_synthetic_avs"):
        harness.resolve_data_root(cfg)


def test_missing_asset_is_built_by_its_builder(tmp_path):
    path = tmp_path / "assets" / "w.txt"
    builder = {"_target_": "pathlib.Path.write_text", "_partial_": True, "data": "x"}
    cfg = OmegaConf.create({"model": {"assets": [{"path": str(path), "builder": builder}]}})
    path.parent.mkdir()
    harness.ensure_assets(cfg)
    assert path.read_text() == "x"
