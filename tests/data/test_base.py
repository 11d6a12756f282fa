"""The DataModule contract (cola/data/base.py) and the shared box helpers (cola/boxes.py)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

import cola.data
from cola.boxes import box_cxcywh_to_xyxy, box_xywh_to_xyxy, box_xyxy_to_cxcywh
from cola.data.ave import AVEDataModule
from cola.data.avs import AVSDataModule
from cola.data.base import CoLADataModule, check_int
from cola.data.refcoco import RefCOCODataModule

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("cls", [RefCOCODataModule, AVEDataModule, AVSDataModule])
def test_every_datamodule_implements_the_contract(cls):
    assert issubclass(cls, CoLADataModule) and not inspect.isabstract(cls)
    for name in ("validate", "build_dataset", "floor_metrics", "split_floor_metrics", "collate", "dataset"):
        assert callable(getattr(cls, name))
    assert isinstance(inspect.getattr_static(cls, "num_skipped"), property)


def test_the_contract_cannot_be_instantiated_half_done():
    class Half(CoLADataModule):
        def validate(self):
            pass

    with pytest.raises(TypeError, match="build_dataset"):
        Half()


@pytest.mark.parametrize(
    ("value", "optional", "minimum", "message"),
    [(0, False, 1, "a positive integer"), (2.0, False, 1, "got 2.0"), (-1, True, 0, "an integer >= 0 or null")],
)
def test_check_int_names_key_rule_and_value(value, optional, minimum, message):
    with pytest.raises(ValueError, match=rf"data\.batch_size must be .*{message}"):
        check_int("batch_size", value, optional=optional, minimum=minimum)


def test_data_never_imports_metrics_for_boxes():
    """Only the AVS floor imports cola.metrics (its scores are the task's metrics), never at module level."""
    for path in Path(cola.data.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [n.module or "" for n in top if isinstance(n, ast.ImportFrom)] + [
            a.name for n in top if isinstance(n, ast.Import) for a in n.names
        ]
        assert not [m for m in names if m.startswith("cola.metrics")], path


def test_torchvision_box_conversions_equal_the_hand_formulas_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        b = torch.rand(64, 3, 4, generator=g, dtype=dtype) * 500  # (..., 4): any leading shape
        cx, cy, w, h = b.unbind(-1)
        assert torch.equal(box_cxcywh_to_xyxy(b), torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1))
        x0, y0, x1, y1 = b.unbind(-1)
        assert torch.equal(box_xyxy_to_cxcywh(b), torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], -1))
        assert torch.equal(box_xywh_to_xyxy(b), torch.cat([b[..., :2], b[..., :2] + b[..., 2:]], -1))
