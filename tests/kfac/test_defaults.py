"""K-FAC's defaults on a flat start: λ must leave its initial 150 quickly while the quadratic
model keeps predicting the steps well (ρ > 3/4), or K-FAC sits on the mean-image plateau of a
default-initialised autoencoder for hundreds of steps (issue 16, docs/benchmarks.md)."""

import math

import pytest
import torch
from torch import nn

from kfac import KFAC
from kfac.damping import levenberg_marquardt
from kfac.losses import negative_log_likelihood


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
    """From the paper's λ₀ = 150: §6.5 alone (λ ← ω₁λ per success, ω₁ = (19/20)⁵) would still
    have λ ≈ 7 at step 60 — the measured stall; the run of successes compounds the decrease to
    ≤ 1e-3."""
    model = default_init_autoencoder()
    optimizer = KFAC(model, "bce", damping=150.0)  # the paper's λ₀, the slowest start
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


def saturated_shares(model: nn.Sequential, data: torch.Tensor) -> list[float]:
    """Per hidden sigmoid layer, the share of its outputs outside [0.02, 0.98]."""
    shares, outputs = [], data
    with torch.no_grad():
        for module in list(model)[:-2]:  # the last Linear and Sigmoid are the output
            outputs = module(outputs)
            if isinstance(module, nn.Sigmoid):
                shares.append(float(((outputs < 0.02) | (outputs > 0.98)).double().mean()))
    return shares


def train_from_a_flat_start(steps: int, **options) -> tuple[float, float, float]:
    """K-FAC on the default-initialised autoencoder in float64 (batch 64 of 256 images):
    (the largest share of saturated hidden units, sigmoid output outside [0.02, 0.98], seen
    in any hidden layer every 5 steps; the final loss; the mean-image plateau's loss)."""
    model = default_init_autoencoder().double()
    data = digit_like_images(256).double()
    mean = data.mean(0).clamp(1e-6, 1 - 1e-6)
    plateau = float(-(data * mean.log() + (1 - data) * (1 - mean).log()).sum(1).mean())
    optimizer = KFAC(model, "bce", **options)
    generator = torch.Generator().manual_seed(0)
    saturated = 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(0, data.shape[0], (64,), generator=generator)
        optimizer.step(data[idx], data[idx])
        if step % 5 == 0:
            saturated = max(saturated, *saturated_shares(model, data))
    with torch.no_grad():
        loss = float(negative_log_likelihood(model(data), data, "bce").mean())
    return saturated, loss, plateau


FLAT_START_SEEDS = range(8)


def test_the_defaults_leave_a_flat_start_on_most_seeds_without_saturating_its_units():
    """The stall of issue 16, over seeds rather than on chosen ones: leaving a flat start is
    chaotic (which seeds leave changes with rounding), so a test of one or two seeds passes by
    luck.  Counted: seeds whose loss at step 200 is below 0.85 of the mean-image plateau's with
    no hidden layer ever more than half saturated.  The defaults: 6 of seeds 0–7 (seed 6 leaves
    with a saturated layer, seed 7 stays on the plateau).  Measured with the earlier choices
    that the defaults replaced: λ₀ = 150, 1 of 8; η = 0, 2; the momentum unbounded, 0 (three
    of them diverge)."""
    passed = []
    for seed in FLAT_START_SEEDS:
        saturated, loss, plateau = train_from_a_flat_start(200, seed=seed)
        passed.append(saturated < 0.5 and loss < 0.85 * plateau)
    assert sum(passed) >= 5, passed


@pytest.mark.parametrize("family", ["cross_entropy", "bce"])
@pytest.mark.parametrize("steps", [0, 1])
def test_the_l2_term_applies_over_its_first_steps_only(family, steps):
    """A step within `weight_decay_steps` is −lr·F̌⁻¹(∇L + ηθ) at γ = sqrt(λ + η); one after
    them is −lr·F̌⁻¹∇L at γ = sqrt(λ) (explicit Kronecker inverse), through the per-example
    product here (layers wider than the batch), which η > 0 turns off."""
    from tests.kfac.explicit import batch, block_diagonal_inverse, tiny_net
    from tests.kfac.test_optimizer import explicit_fixed_step, one_fixed_step

    model, (x, y) = tiny_net(widths=(4, 30, 25, 3)), batch(family, n=8)
    damping, eta = 0.05, 1e-3
    applied = eta if steps else 0.0
    expected, _ = explicit_fixed_step(
        model, x, y, family, block_diagonal_inverse, (damping + applied) ** 0.5, applied
    )
    update, opt = one_fixed_step(
        model, x, y, family, damping=damping, weight_decay=eta, weight_decay_steps=steps
    )
    torch.testing.assert_close(update, expected, rtol=1e-9, atol=1e-12)
    assert any(opt.preconditioner.prefers_per_example(b, 8) for b in opt.blocks)
    assert opt.weight_decay(1) == applied


def test_a_state_dict_from_before_weight_decay_steps_keeps_eta_throughout():
    """Checkpoints saved before `weight_decay_steps` existed resume as they were trained."""
    from tests.kfac.explicit import batch, tiny_net

    x, y = batch("bce")
    optimizer = KFAC(tiny_net(), "bce", weight_decay=1e-3)
    optimizer.step(x, y)
    state = optimizer.state_dict()
    del state["param_groups"][0]["weight_decay_steps"]
    resumed = KFAC(tiny_net(), "bce")
    resumed.load_state_dict(state)
    assert resumed.weight_decay(10**6) == 1e-3
    assert math.isfinite(float(resumed.step(x, y)))


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


def projected_gradient_minimum(matrix: torch.Tensor, linear: torch.Tensor, bound: float):
    """Brute force: projected gradient descent on ½cᵀQc + bᵀc with |c₁| <= bound, step 1/‖Q‖;
    Q's condition number is at most 20 below, so 3,000 steps converge far below 1e-6."""
    c = torch.zeros(2, dtype=torch.float64)
    step = 1.0 / float(torch.linalg.matrix_norm(matrix, 2))
    for _ in range(3000):
        c = c - step * (matrix @ c + linear)
        c[1] = c[1].clamp(-bound, bound)
    return c.tolist()


def test_the_momentum_coefficient_stays_in_its_band_at_the_models_minimum_there():
    """solve_step_coefficients against projected gradient descent on random 2×2 models, about
    half of which have their free minimum at |μ| > 1 (the flat-region steps that grew δ
    geometrically)."""
    from kfac.quadratic import MAX_MOMENTUM, model_change, solve_step_coefficients

    generator = torch.Generator().manual_seed(3)
    outside = 0
    for _ in range(12):
        basis = torch.linalg.qr(torch.randn(2, 2, generator=generator, dtype=torch.float64))[0]
        spectrum = torch.tensor([1.0, 0.05], dtype=torch.float64) * 10 ** (
            2 * torch.rand(1, generator=generator, dtype=torch.float64)
        )
        curvature = basis @ torch.diag(spectrum) @ basis.T
        damping = 0.01 * torch.eye(2, dtype=torch.float64)
        linear = 3 * torch.randn(2, generator=generator, dtype=torch.float64)
        free = -torch.linalg.solve(curvature + damping, linear)
        outside += bool(abs(free[1]) > MAX_MOMENTUM)
        solved = solve_step_coefficients(curvature, damping, linear)
        expected = projected_gradient_minimum(curvature + damping, linear, MAX_MOMENTUM)
        assert abs(solved.mu) <= MAX_MOMENTUM
        assert [solved.alpha, solved.mu] == pytest.approx(expected, abs=1e-6)
        coefficients = torch.tensor([solved.alpha, solved.mu], dtype=torch.float64)
        assert solved.predicted_change == pytest.approx(
            float(model_change(curvature, linear, coefficients))
        )
    assert 3 <= outside <= 9
