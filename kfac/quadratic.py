"""The exact quadratic model of the objective along the update directions (paper §6.4, §7).

M(δ) = h(θ) + ∇hᵀδ + ½ δᵀ(F + (λ + η)I)δ, with F the exact Fisher (= Gauss–Newton) of the
mini-batch.  For δ = αΔ + μδ₀ only the 2×2 matrix of products vᵀ C w between Δ and δ₀ matters;
the Fisher part vᵀFw = E[(Jv)ᵀ F_R (Jw)] needs one forward-mode Jacobian–vector product per
direction, never the matrix itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as forward_ad
from torch import nn
from torch.func import functional_call

from kfac.enums import LossFamily
from kfac.losses import output_fisher_bilinear


def output_directions(
    model: nn.Module, inputs: torch.Tensor, directions: list[dict[str, torch.Tensor]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The outputs z and J·v for each parameter-space direction v (a dict name → tensor).

    One forward pass with dual numbers per direction (forward-mode AD): measured here it is
    cheaper than torch.func.jvp, sequential or vectorised with vmap.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if name in directions[0]}
    products = []
    with running_statistics_frozen(model), torch.enable_grad():
        for direction in directions:
            with forward_ad.dual_level():
                dual = {
                    name: forward_ad.make_dual(p, direction[name]) for name, p in params.items()
                }
                primal, tangent = forward_ad.unpack_dual(functional_call(model, dual, (inputs,)))
                products.append(tangent.detach())
    return primal.detach(), products


@contextmanager
def running_statistics_frozen(model: nn.Module):
    """Batch norm keeps normalising by batch statistics but stops updating its running ones,
    so the extra forward passes of the quadratic model neither count twice nor write buffers
    (which forward-mode transforms forbid)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracking = [m.track_running_stats for m in norms]
    for m in norms:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, value in zip(norms, tracking, strict=True):
            m.track_running_stats = value


def fisher_gram(
    outputs: torch.Tensor, products: list[torch.Tensor], family: LossFamily
) -> torch.Tensor:
    """The matrix [vᵢᵀ F vⱼ] for the directions whose output products are given."""
    count = len(products)
    gram = outputs.new_zeros(count, count)
    for i in range(count):
        for j in range(i, count):
            gram[i, j] = gram[j, i] = output_fisher_bilinear(
                outputs, products[i], products[j], family
            )
    return gram


def dot(left: list[torch.Tensor], right: list[torch.Tensor]) -> torch.Tensor:
    """Σ ⟨lᵢ, rᵢ⟩ over a list of tensors (BLAS dot products, no temporaries)."""
    return sum(torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(left, right, strict=True))


@dataclass
class StepCoefficients:
    """The minimiser of M over span{Δ, δ₀} and the model's predicted change M(δ) − M(0)."""

    alpha: float
    mu: float
    predicted_change: float


def solve_step_coefficients(curvature: torch.Tensor, linear: torch.Tensor) -> StepCoefficients:
    """Minimise ½ cᵀQc + bᵀc over c = (α, μ), or over α alone when Q is 1×1 (§7).

    Q = [vᵢᵀ(F + (λ+η)I)vⱼ] and b = [∇hᵀvᵢ].  A singular 2×2 Q (δ₀ parallel to Δ, or zero)
    falls back to the α-only solution.
    """
    curvature, linear = curvature.double(), linear.double()
    if curvature.shape[0] == 2:
        det = curvature[0, 0] * curvature[1, 1] - curvature[0, 1] ** 2
        if det > 1e-12 * curvature[0, 0] * curvature[1, 1]:
            coefficients = -torch.linalg.solve(curvature, linear)
            change = 0.5 * coefficients @ curvature @ coefficients + linear @ coefficients
            return StepCoefficients(float(coefficients[0]), float(coefficients[1]), float(change))
    alpha = -linear[0] / curvature[0, 0]
    change = 0.5 * alpha * linear[0]
    return StepCoefficients(float(alpha), 0.0, float(change))
