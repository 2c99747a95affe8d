"""K-FAC's defaults on a flat start: λ must leave its initial 150 quickly while the quadratic
model keeps predicting the steps well (ρ > 3/4), or K-FAC sits on the mean-image plateau of a
default-initialised autoencoder for hundreds of steps (issue 16, docs/benchmarks.md)."""

import math

import pytest
import torch
from torch import nn

from kfac import KFAC
from kfac.damping import levenberg_marquardt


def default_init_autoencoder() -> nn.Sequential:
    """196-50-25-12-3-12-25-50-196 (the paper's depth at a twentieth of its widths, 14×14
    images), sigmoid units, a linear code layer, PyTorch's default nn.Linear initialisation:
    its output starts at and stays near the mean image, where the loss surface is flat."""
    torch.manual_seed(0)
    dims = [196, 50, 25, 12, 3, 12, 25, 50, 196]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(dims, dims[1:], strict=False)):
        layers.append(nn.Linear(n_in, n_out))
        if i not in (3, len(dims) - 2):
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def digit_like_images(count: int) -> torch.Tensor:
    """Binary 14×14 images: three random crosses on a dark background (no data files)."""
    generator = torch.Generator().manual_seed(1)
    images = torch.zeros(count, 14, 14)
    for i in range(count):
        rows = torch.randint(2, 12, (3,), generator=generator)
        cols = torch.randint(2, 12, (3,), generator=generator)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            images[i, r, c - 2 : c + 3] = 1.0
            images[i, r - 2 : r + 3, c] = 1.0
    return images.reshape(count, 196)


def test_damping_leaves_its_initial_value_within_sixty_steps_of_a_flat_start():
    """Paper §6.5 alone (λ ← ω₁λ per success, ω₁ = (19/20)⁵) would still have λ ≈ 7 at step 60
    — the measured stall; the run of successes compounds the decrease to ≤ 1e-3."""
    model = default_init_autoencoder()
    optimizer = KFAC(model, "bce")
    data = digit_like_images(256)
    generator = torch.Generator().manual_seed(0)
    rhos = []
    for _ in range(60):
        idx = torch.randint(0, data.shape[0], (64,), generator=generator)
        optimizer.step(data[idx], data[idx])
        if not math.isnan(optimizer.diagnostics["rho"]):
            rhos.append(optimizer.diagnostics["rho"])
    assert len(rhos) == 12
    assert sum(rho > 0.75 for rho in rhos) >= 10, rhos
    assert optimizer.param_groups[0]["damping"] <= 1e-3, (optimizer.param_groups[0], rhos)


@pytest.mark.parametrize(("successes", "expected"), [(1, 0.5), (2, 0.25), (3, 0.125), (0, 1.0)])
def test_a_run_of_successes_compounds_the_decrease(successes, expected):
    """The k-th success in a row multiplies λ by ω₁ᵏ; ρ in [1/4, 3/4] leaves it unchanged."""
    rho = 0.9 if successes else 0.5
    assert levenberg_marquardt(1.0, rho, 0.5, successes) == pytest.approx(expected)


def test_a_failure_ends_the_run_of_successes():
    optimizer = KFAC(default_init_autoencoder(), "bce")
    controller, group = optimizer.damping, optimizer.param_groups[0]
    group["damping"] = 1.0
    omega = group["damping_decay"] ** group["damping_interval"]
    for expected in (omega, omega**3, omega**6):
        controller.adapt(-1.0, -1.0)  # ρ = 1
        assert group["damping"] == pytest.approx(expected)
    controller.adapt(1.0, -1.0)  # ρ < 0: λ grows, the run ends
    assert group["damping"] == pytest.approx(omega**5)
    controller.adapt(-1.0, -1.0)
    assert group["damping"] == pytest.approx(omega**6)
    assert optimizer.state_dict()["kfac"]["counters"]["damping_successes"] == 1
