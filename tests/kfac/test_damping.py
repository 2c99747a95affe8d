"""The safeguards of the adaptive step (§6.5, §7) in float64: the reduction ratio's model, the
singular 2×2 fallback and the bounds of λ."""

import pytest
import torch

from kfac.damping import MAX_DAMPING, MIN_DAMPING, levenberg_marquardt
from kfac.quadratic import SINGULAR_2X2, solve_step_coefficients
from tests.kfac import explicit
from tests.kfac.explicit import batch, tiny_net
from tests.kfac.test_optimizer import every_step_kfac


def as_tensors(*rows):
    return [torch.tensor(r, dtype=torch.float64) for r in rows]


def test_well_conditioned_2x2_is_solved_exactly_and_reports_both_model_changes():
    curvature, euclidean, linear = as_tensors(
        [[2.0, 0.3], [0.3, 1.0]], [[1.0, 0.2], [0.2, 0.5]], [1.0, -0.4]
    )
    damping = 0.7 * euclidean
    result = solve_step_coefficients(curvature, damping, linear)
    expected = -torch.linalg.solve(curvature + damping, linear)
    assert [result.alpha, result.mu] == pytest.approx(expected.tolist(), rel=1e-12)
    c = expected
    assert result.damped_change == pytest.approx(
        float(0.5 * c @ (curvature + damping) @ c + linear @ c), rel=1e-12
    )
    # ρ's prediction is the model of h, without λ: a larger decrease than the damped one.
    undamped = float(0.5 * c @ curvature @ c + linear @ c)
    assert result.predicted_change == pytest.approx(undamped, rel=1e-12)
    assert result.predicted_change < result.damped_change < 0


@pytest.mark.parametrize("gap", [0.0, 1e-9, 0.1 * SINGULAR_2X2])
def test_singular_2x2_falls_back_to_the_alpha_only_solve(gap):
    """δ₀ (nearly) parallel to Δ: det/(Q₀₀Q₁₁) = gap below the threshold gives μ = 0 and the
    1-D minimiser α = −b₀/Q₀₀, never the huge opposite-signed pair of the exact solve."""
    q, lam, b = 3.0, 0.5, 2.0
    off = (1.0 - gap) ** 0.5  # cos∠ in the damped metric, so that det = gap·Q₀₀Q₁₁
    curvature, euclidean, linear = as_tensors(
        [[q, q * off], [q * off, q]], [[1.0, off], [off, 1.0]], [b, b * 0.999]
    )
    result = solve_step_coefficients(curvature, lam * euclidean, linear)
    alpha = -b / (q + lam)
    assert result.mu == 0.0
    assert result.alpha == pytest.approx(alpha, rel=1e-12)
    assert result.damped_change == pytest.approx(0.5 * alpha**2 * (q + lam) + alpha * b, rel=1e-12)
    assert result.predicted_change == pytest.approx(0.5 * alpha**2 * q + alpha * b, rel=1e-12)


def test_one_direction_has_no_momentum():
    curvature, damping, linear = as_tensors([[4.0]], [[1.0]], [-2.0])
    result = solve_step_coefficients(curvature, damping, linear)
    assert (result.alpha, result.mu) == (pytest.approx(0.4), 0.0)
    assert result.damped_change == pytest.approx(-0.4)
    assert result.predicted_change == pytest.approx(0.5 * 0.16 * 4.0 - 0.8)


def test_levenberg_marquardt_keeps_damping_within_its_bounds():
    assert levenberg_marquardt(MIN_DAMPING, 0.9, 0.5) == MIN_DAMPING
    assert levenberg_marquardt(MAX_DAMPING, 0.1, 0.5) == MAX_DAMPING
    assert levenberg_marquardt(MIN_DAMPING, float("inf"), 0.5) == 2 * MIN_DAMPING


def test_fixed_lr_reduction_ratio_models_the_step_taken():
    """With a fixed lr, ρ divides by M(δ) − M(0) at the update δ itself (coefficient 1), not at
    the model's minimiser along δ."""
    family, eta = "bce", 1e-3
    model, (x, y) = tiny_net(), batch(family)
    opt, theta0, gradient, fisher = every_step_kfac(model, x, y, family, eta, lr=0.3, damping=0.2)
    opt.step(x, y)
    delta = explicit.parameter_vector(model).detach() - theta0
    curvature = fisher + eta * torch.eye(len(delta), dtype=delta.dtype)
    expected = float(0.5 * delta @ curvature @ delta + gradient @ delta)
    assert opt.diagnostics["quadratic_model"] == pytest.approx(expected, rel=1e-7)
