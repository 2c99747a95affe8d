"""Tiny float64 networks and batches shared by the kfac tests.

The nets are small enough for dense brute force (a few dozen parameters) and the batches big
enough (N = 64) that every Kronecker factor is invertible.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

LOSSES = ("cross_entropy", "bce", "mse")

# name -> (layer widths, activation per hidden layer, bias per layer)
NETS = {
    "tanh_bias": ((3, 4, 3, 2), (nn.Tanh, nn.Tanh), (True, True, True)),
    "sigmoid_no_bias": ((2, 5, 4, 3), (nn.Sigmoid, nn.Sigmoid), (False, False, False)),
    "mixed_four_layers": (
        (3, 3, 4, 2, 3),
        (nn.Tanh, nn.Sigmoid, nn.Tanh),
        (True, False, True, False),
    ),
}


def make_net(name: str, seed: int = 0) -> nn.Sequential:
    """A float64 MLP: Linear, activation, ..., Linear (the output is logits / the mean)."""
    widths, activations, biases = NETS[name]
    torch.manual_seed(seed)
    modules: list[nn.Module] = []
    for i, bias in enumerate(biases):
        layer = nn.Linear(widths[i], widths[i + 1], bias=bias)
        with torch.no_grad():  # weights of order 1, so that sigmoid units are not all ≈ 1/2
            layer.weight.normal_(0.0, 1.5 / widths[i] ** 0.5)
        modules.append(layer)
        if i < len(activations):
            modules.append(activations[i]())
    return nn.Sequential(*modules).double()


def make_batch(
    net: nn.Sequential, loss: str, count: int = 64, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and (empirical) targets of the right kind for the loss family."""
    generator = torch.Generator().manual_seed(seed)
    first = next(m for m in net if isinstance(m, nn.Linear))
    last = [m for m in net if isinstance(m, nn.Linear)][-1]
    inputs = torch.randn(count, first.in_features, generator=generator, dtype=torch.float64)
    outputs = last.out_features
    if loss == "cross_entropy":
        targets = torch.randint(outputs, (count,), generator=generator)
    elif loss == "bce":
        targets = torch.randint(2, (count, outputs), generator=generator).double()
    else:
        targets = torch.randn(count, outputs, generator=generator, dtype=torch.float64)
    return inputs, targets


@pytest.fixture(params=sorted(NETS))
def net_name(request) -> str:
    return request.param


@pytest.fixture(params=LOSSES)
def loss(request) -> str:
    return request.param


@pytest.fixture
def build_net():
    """make_net, as a fixture so test modules need not import this conftest."""
    return make_net


@pytest.fixture
def build_batch():
    """make_batch, as a fixture."""
    return make_batch
