"""γ, the strength of the factored Tikhonov damping (paper §6.3), and its search (§6.6).

Each layer's factors are inverted damped, (Ā + πγI)⁻¹ and (G + (γ/π)I)⁻¹
(`kfac.inverses.damp_factors`).  The paper's γ = sqrt(λ + η) ties γ to the Levenberg–Marquardt
λ (§6.5) and the ℓ2 term η (§6.3).  With `gamma_search`, γ starts there and then moves on its
own (§6.6): every T₂ = `gamma_interval` steps the inverses are formed at each of γω₂, γ and
γ/ω₂, ω₂ = sqrt(ω)^T₂ with ω = `damping_decay` (19/20: the paper's ω₂ = sqrt(19/20)^T₂), and
the γ whose step has the lowest damped quadratic model M̂(δ) (§7) is kept.  The search needs
the model, so a fixed learning rate never searches.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def tied_gamma(damping: float, weight_decay: float) -> float:
    """γ = sqrt(λ + η) (§6.3)."""
    return math.sqrt(damping + weight_decay)


def gamma_search_due(group: dict, step: int) -> bool:
    """Whether `step` (counted from 1, an inverse step) searches γ: every `gamma_interval`
    steps after the first, with the quadratic model in use (lr None) and `gamma_search` on."""
    return (
        group["lr"] is None
        and group["gamma_search"]
        and step > 1
        and (step - 1) % group["gamma_interval"] == 0
    )


def search_gamma(gamma: float, group: dict, damped_change: Callable[[float], float]) -> float:
    """The candidate among γω₂, γ, γ/ω₂ (tried in that order, the first of equals kept) whose
    step gives the lowest `damped_change(candidate)`, the M̂(δ) − M̂(0) of the step solved with
    the inverses formed at that candidate."""
    omega = math.sqrt(group["damping_decay"]) ** group["gamma_interval"]
    return min((gamma * omega, gamma, gamma / omega), key=damped_change)
