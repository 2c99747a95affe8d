"""Parameter-space vectors held as lists of tensors, one per parameter (∇h, Δ, δ₀, δ)."""

from __future__ import annotations

import torch


def dot(left: list[torch.Tensor], right: list[torch.Tensor]) -> torch.Tensor:
    """Σ ⟨lᵢ, rᵢ⟩ without copies: a layer's part of F̆⁻¹∇h is a strided view of its [W b]
    matrix, which reshape(-1) would copy before every product."""
    return sum(_tensor_dot(a, b) for a, b in zip(left, right, strict=True))


def _tensor_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.is_contiguous() and b.is_contiguous():
        return torch.dot(a.view(-1), b.view(-1))
    return torch.linalg.vecdot(a, b).sum()


def squared_norm(tensors: list[torch.Tensor]) -> float:
    return float(sum(t.pow(2).sum() for t in tensors))


def combine(alpha: float, directions, mu: float, previous) -> list[torch.Tensor]:
    """δ = α·Δ + μ·δ₀, with one allocation per tensor."""
    if previous[0] is None or mu == 0:
        return [alpha * d for d in directions]
    return [(alpha * d).add_(p, alpha=mu) for d, p in zip(directions, previous, strict=True)]


def objective_gradient(p: torch.Tensor, eta: float) -> torch.Tensor:
    """∇h = ∇(mean NLL) + ηθ (§6.1) for one parameter."""
    if p.grad is None:
        return eta * p
    return p.grad if eta == 0 else torch.add(p.grad, p, alpha=eta)
