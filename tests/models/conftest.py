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


def tower_inputs(
    family: str, batch: int = 3, seed: int = 0, *, lengths: tuple[int, int] = (4, 6)
) -> dict[str, torch.Tensor]:
    """Random inputs of a tiny tower of ``family`` (``vit`` 28 x 28 images, ``bert`` 7 tokens, ``ast`` 100 fbank
    frames); the first two ``bert`` samples are padded after ``lengths`` tokens."""
    g = torch.Generator().manual_seed(seed)
    if family == "vit":
        return {"pixel_values": torch.randn(batch, 3, 28, 28, generator=g)}
    if family == "bert":
        ids = torch.randint(1, 100, (batch, 7), generator=g)
        mask = torch.ones(batch, 7, dtype=torch.long)
        for row, length in enumerate(lengths[:batch]):
            mask[row, length:] = 0  # padded samples
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_values": torch.randn(batch, 100, 128, generator=g)}


def reference_forward(tower, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The untouched model's own forward (what the block steps and the adapted encoder must reproduce)."""
    if tower.family == "vit":
        return tower.model.forward_features(inputs["pixel_values"])
    return tower.model(**inputs).last_hidden_state
