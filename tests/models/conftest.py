"""Fixtures of the model tests."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a loaded 2-core machine (30x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_forward(tower, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The untouched model's own forward (what the block steps and the adapted encoder must reproduce)."""
    if tower.family == "vit":
        return tower.model.forward_features(inputs["pixel_values"])
    return tower.model(**inputs).last_hidden_state
