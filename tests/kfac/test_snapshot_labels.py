"""A snapshot names its layers as a person does: kind, rank and shape for an nn.Sequential's
positional layers, the model's own names otherwise."""

from __future__ import annotations

import torch
from torch import nn

from kfac.snapshot import layer_labels, snapshot_payload


def test_sequential_layers_are_named_by_kind_rank_and_shape() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 10),
        nn.Tanh(),
        nn.Linear(10, 3),
    )
    assert layer_labels(model, ["0", "3", "5"]) == ["conv1 1→4 3×3", "fc1 64→10", "fc2 10→3"]
    assert layer_labels(model, ["5"]) == ["fc2 10→3"]  # the rank is the model's, not the pick's


def test_named_layers_keep_their_names_and_the_payload_carries_the_labels() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(3, 5), nn.Tanh())
            self.head = nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x))

    torch.manual_seed(0)
    model = Net().double()
    inputs = torch.randn(6, 3, dtype=torch.float64)
    targets = torch.randint(0, 2, (6,))
    payload = snapshot_payload(model, inputs, targets, "cross_entropy")
    assert payload["extras"]["layer_names"] == ["encoder.0", "head"]
    assert payload["extras"]["layer_labels"] == ["encoder.0 3→5", "head 5→2"]
