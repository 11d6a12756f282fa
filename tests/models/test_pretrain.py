"""The tiny-ViT pretraining (cola.models.pretrain) runs and writes weights the tiny vision tower loads."""

from __future__ import annotations

import numpy as np
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from cola.models.pretrain import TINY_VIT, make_batch, pretrain_tiny_vit


def test_pretrain_tiny_vit_writes_loadable_weights(tmp_path):
    out = pretrain_tiny_vit(tmp_path / "sub" / "vit.safetensors", steps=2, batch=2, dtype="float16")
    assert out == tmp_path / "sub" / "vit.safetensors" and not list(out.parent.glob("*.tmp"))
    state = load_file(out)
    assert {v.dtype for v in state.values()} == {torch.float16}
    model = timm.create_model(**TINY_VIT)
    model.load_state_dict({k: v.float() for k, v in state.items()})  # strict: the same architecture
    with safe_open(out, "pt") as f:
        assert f.metadata()["steps"] == "2" and f.metadata()["dtype"] == "float16"


def test_make_batch_labels_one_per_patch():
    x, y = make_batch(np.random.default_rng(0), 3, 112, 14)
    assert x.shape == (3, 3, 112, 112) and y.shape == (3, 64) and y.min() >= 0
