"""Parameter-space vectors held as lists of tensors, one per parameter (∇h, Δ, δ₀, δ)."""

from __future__ import annotations

import torch


def dot(left: list[torch.Tensor], right: list[torch.Tensor]) -> torch.Tensor:
    """Σ ⟨lᵢ, rᵢ⟩ without copies: contiguous tensors by BLAS dot, any other layout by vecdot,
    where reshape(-1) would copy it first.  The optimizer's own vectors are contiguous
    (`kfac.preconditioner.product_parts`, `kfac.layers.LinearBlock.split`)."""
    return dots([(left, right)])[0]


def dots(pairs: list[tuple[list[torch.Tensor], list[torch.Tensor]]]) -> list[torch.Tensor]:
    """`dot` of each pair, parameter by parameter: a parameter's tensors are read from memory
    once for all the pairs and stay in cache in between (the quadratic model's five products
    over the autoencoder's 2.8M parameters: 2.5 ms against 3.2 ms pair by pair, the same sums
    in the same order)."""
    totals: list = [0] * len(pairs)
    for i in range(len(pairs[0][0])):
        for k, (left, right) in enumerate(pairs):
            totals[k] = totals[k] + _tensor_dot(left[i], right[i])
    return totals


def _tensor_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return torch.linalg.vecdot(a, b).sum()


def squared_norm(tensors: list[torch.Tensor]) -> float:
    return float(dot(tensors, tensors))


def objective_value(loss: float, params: list[torch.Tensor], eta: float) -> float:
    """h(θ) = mean NLL + ½η‖θ‖² (§6.1), with no pass over θ when η = 0."""
    return loss + 0.5 * eta * squared_norm(params) if eta else loss


def combine(alpha: float, directions, mu: float, previous) -> list[torch.Tensor]:
    """δ = α·Δ + μ·δ₀, written over `directions`, which the caller gives up: no new buffers
    (a fresh tensor of the autoencoder's 2.8M parameters costs its page faults every step)."""
    torch._foreach_mul_(directions, alpha)
    if previous[0] is not None and mu != 0:
        torch._foreach_add_(directions, previous, alpha=mu)
    return directions


def objective_gradient(p: torch.Tensor, eta: float) -> torch.Tensor:
    """∇h = ∇(mean NLL) + ηθ (§6.1) for one parameter."""
    if p.grad is None:
        return eta * p
    return p.grad if eta == 0 else torch.add(p.grad, p, alpha=eta)
