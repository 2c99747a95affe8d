"""The model zoo: shapes, parameter counts equal to the spec's arithmetic, determinism."""

import pytest
import torch
from torch import nn

from backend.spec import RunSpec
from worker.zoo.models import build_model, count_parameters, linear_layers

SPECS = [
    {},  # the paper's MNIST autoencoder
    {"model": {"name": "autoencoder", "width_scale": 0.25, "activation": "tanh"}},
    {"model": {"name": "autoencoder", "encoder": [20, 4], "init": "glorot", "loss": "mse"}},
    {"dataset": "digits8x8", "model": {"name": "mlp", "hidden": [32, 16]}},
    {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [], "init": "sparse"}},
]


@pytest.mark.parametrize("data", SPECS)
def test_shapes_and_parameter_count_match_the_spec(data):
    spec = RunSpec.model_validate(data)
    model = build_model(spec)
    dims = spec.layer_dims()
    assert count_parameters(model) == spec.parameter_count()
    assert [(m.in_features, m.out_features) for m in linear_layers(model)] == list(
        zip(dims, dims[1:], strict=False)
    )
    out = model(torch.rand(3, dims[0]))
    assert out.shape == (3, dims[-1])


def test_autoencoder_has_a_linear_code_layer_and_logit_output():
    model = build_model(RunSpec(model={"name": "autoencoder", "encoder": [8, 4, 2]}))
    kinds = [type(m).__name__ for m in model]
    encoder = ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]  # a linear code
    decoder = ["Linear", "Sigmoid", "Linear", "Sigmoid", "Linear"]  # logits
    assert kinds == encoder + decoder


def test_sparse_initialisation():
    model = build_model(RunSpec(model={"name": "autoencoder", "encoder": [40, 3]}))
    first, code = linear_layers(model)[:2]
    assert ((first.weight != 0).sum(1) == 15).all()  # 15 incoming weights per unit (Martens 2010)
    assert ((code.weight != 0).sum(1) == 15).all()
    assert (first.bias == 0).all()


def test_built_deterministically_from_the_seed_without_touching_the_global_rng():
    spec = RunSpec(dataset="digits8x8", model={"name": "mlp", "hidden": [16]}, seed=3)
    state = torch.get_rng_state()
    a, b = build_model(spec), build_model(spec)
    assert torch.equal(torch.get_rng_state(), state)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    c = build_model(spec.model_copy(update={"seed": 4}))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_dtype_follows_the_spec():
    model = build_model(RunSpec(dataset="digits8x8", model={"name": "mlp"}, dtype="float64"))
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert isinstance(model, nn.Sequential)


def test_kfac_spec_defaults_are_the_optimizers_defaults():
    """The spec (which the API process reads without torch) mirrors kfac.KFAC's defaults."""
    import dataclasses

    from backend.spec import KFACSpec
    from kfac.settings import KFACSettings

    defaults = {f.name: f.default for f in dataclasses.fields(KFACSettings)}
    for name, value in KFACSpec().kfac_kwargs().items():
        assert defaults[name] == value, name
