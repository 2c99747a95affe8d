"""Levenberg–Marquardt adaptation of the damping λ (paper §6.5)."""

from __future__ import annotations

import math

MIN_DAMPING = 1e-8
MAX_DAMPING = 1e8


def levenberg_marquardt(damping: float, rho: float, omega: float) -> float:
    """λ ← ω₁λ if ρ > 3/4, λ ← λ/ω₁ if ρ < 1/4, else unchanged (ω₁ < 1).

    A ρ that is not finite (the objective became NaN/Inf, or the model predicted no decrease)
    counts as a failure, so λ grows.
    """
    if not math.isfinite(rho) or rho < 0.25:
        damping /= omega
    elif rho > 0.75:
        damping *= omega
    return min(max(damping, MIN_DAMPING), MAX_DAMPING)


class DampingController:
    """Keeps λ in the optimizer's param group, so that it round-trips with state_dict()."""

    def __init__(self, group: dict):
        self.group = group

    def adapt(self, actual_change: float, predicted_change: float) -> float:
        """Update λ from ρ = (h(θ+δ) − h(θ)) / (M(δ) − M(0)); returns ρ."""
        if predicted_change < 0 and math.isfinite(actual_change):
            rho = actual_change / predicted_change
        else:
            rho = math.nan
        omega = self.group["damping_decay"] ** self.group["damping_interval"]
        self.group["damping"] = levenberg_marquardt(self.group["damping"], rho, omega)
        return rho
