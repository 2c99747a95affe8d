"""The estimate's rule for a chain (`ModelSpec.is_chain`, decided from the spec without torch)
against what K-FAC finds in the model the worker builds (`kfac.linearisation`): the quadratic
model of §7 reads J·Δ, J·δ₀ off the training pass exactly when both say so."""

from __future__ import annotations

import pytest
import torch

from backend.spec import RunSpec
from kfac.layers import find_blocks
from kfac.linearisation import LinearisedChain
from worker.zoo.models import build_model

CONV = {"name": "convnet", "channels": [4, 8], "pooling": ["max", "avg"]}


@pytest.mark.parametrize(
    "run",
    [
        {"dataset": "synthetic", "model": {"name": "autoencoder", "encoder": [16, 4]}},
        {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [16], "activation": "relu"}},
        {"dataset": "digits8x8", "model": CONV},
        {"dataset": "digits8x8", "model": {**CONV, "hidden": [12], "pooling": ["none", "max"]}},
        {"dataset": "digits8x8", "model": {**CONV, "batch_norm": True}},
    ],
    ids=["autoencoder", "mlp", "convnet", "convnet_hidden", "convnet_batch_norm"],
)
def test_the_spec_knows_whether_the_built_model_is_a_chain(run: dict) -> None:
    torch.manual_seed(0)
    spec = RunSpec.model_validate(run)
    model = build_model(spec)
    chain = LinearisedChain.of(model, find_blocks(model), list(model.parameters()))
    assert spec.model.is_chain() == (chain is not None)
