"""The stacked q/k/v hypernetworks: stacked weights built once per evaluation, rebuilt when a parameter changes."""

from __future__ import annotations

import torch
from torch import nn

from cola.peft import HyperNetwork, stacked_hypernet_forward


def _nets(seed: int = 0) -> nn.ModuleList:
    torch.manual_seed(seed)
    return nn.ModuleList(HyperNetwork(48, 4, reduction=8) for _ in range(3))


def _separate(nets: nn.ModuleList, c: torch.Tensor) -> torch.Tensor:
    return torch.stack([n(c) for n in nets])


def test_eval_reuses_the_stacks_until_a_parameter_changes():
    nets, c = _nets(), torch.randn(5, 48)
    with torch.no_grad():
        first = stacked_hypernet_forward(nets, c)
        stacks = nets._cola_stacked[1]
        second = stacked_hypernet_forward(nets, c)
        assert nets._cola_stacked[1] is stacks  # no re-stacking while nothing changed
        torch.testing.assert_close(second, first, rtol=0, atol=0)
        nets[1].fc2.weight.add_(0.5)  # an in-place update (as an optimiser step or load_state_dict)
        changed = stacked_hypernet_forward(nets, c)
        assert nets._cola_stacked[1] is not stacks
        torch.testing.assert_close(changed, _separate(nets, c), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(changed[1], first[1])
        torch.testing.assert_close(changed[0], first[0], rtol=0, atol=0)  # the other slices are unchanged


def test_load_state_dict_and_to_invalidate_the_stacks():
    nets, other, c = _nets(0), _nets(1), torch.randn(2, 48)
    with torch.no_grad():
        stacked_hypernet_forward(nets, c)
        nets.load_state_dict(other.state_dict())
        torch.testing.assert_close(stacked_hypernet_forward(nets, c), _separate(other, c), atol=1e-5, rtol=1e-5)
        nets.to(torch.float64)
        out = stacked_hypernet_forward(nets, c.double())
        assert out.dtype == torch.float64


def test_training_stacks_under_autograd_and_every_net_gets_its_gradient():
    nets, c = _nets(), torch.randn(4, 48)
    with torch.no_grad():
        stacked_hypernet_forward(nets, c)  # a cached eval stack must not leak into training
    stacked_hypernet_forward(nets, c).pow(2).sum().backward()
    for n in nets:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (n.fc1.weight, n.fc2.weight, n.norm2.weight))


def test_frozen_hypernets_use_the_cache_under_autograd():
    """condition=random_frozen: the hypernetworks never train, so a training step reuses the stacks too."""
    nets, c = _nets(), torch.randn(3, 48)
    nets.requires_grad_(False)
    stacked_hypernet_forward(nets, c)
    stacks = nets._cola_stacked[1]
    out = stacked_hypernet_forward(nets, c)
    assert nets._cola_stacked[1] is stacks and not out.requires_grad
