"""Inverses of the Kronecker factors and the block-diagonal F̌⁻¹ (paper §4.2, §6.3); the
block-tridiagonal F̂⁻¹ (§4.3, Appendix B) builds on them in `kfac.tridiagonal`.

A layer's gradient is handled as its matrix V of shape (d_g, d_a), so that for any factors
(A ⊗ G) vec(V) = vec(G V Aᵀ) and no Kronecker product is ever formed.  Damping is factored
Tikhonov (§6.3): F̃ᵢᵢ + γ²I is replaced by (Ā + πγI) ⊗ (G + γ/π I) with
π = sqrt((tr Ā / d_a) / (tr G / d_g)).

Every inversion goes through `spd_inverse`, which retries in float64 and then with added jitter
when a Cholesky factorisation fails, and reports what it did instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

JITTER_STEPS = (1e-10, 1e-8, 1e-6, 1e-4)


@dataclass
class Notes:
    """Numerical fall-backs taken during an inversion, for the optimizer's diagnostics."""

    messages: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.messages.append(message)


def all_finite(matrix: torch.Tensor) -> bool:
    """Whether every entry is finite.  A NaN or ±inf entry makes the sum non-finite, so a finite
    sum settles it at the cost of one read (isfinite().all() writes a mask first: ~20× slower,
    a few hundredths of an SGD-m step per step on the autoencoder); only a non-finite sum, an
    overflow or a real non-finite entry, needs the entrywise check."""
    return bool(torch.isfinite(matrix.sum())) or bool(torch.isfinite(matrix).all())


def _cholesky(matrix: torch.Tensor) -> torch.Tensor | None:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if info.item() != 0 or not all_finite(factor):
        return None
    return factor


def spd_cholesky(matrix: torch.Tensor, notes: Notes, what: str = "factor") -> torch.Tensor | None:
    """Lower Cholesky factor of a symmetric positive-definite matrix, with fall-backs.

    Tries the matrix's own dtype, then float64, then float64 with growing jitter relative to
    the mean diagonal.  Returns None (and says so) for a matrix with NaN/Inf entries.
    """
    if not all_finite(matrix):
        notes.add(f"{what}: non-finite entries; inverse not updated")
        return None
    factor = _cholesky(matrix)
    if factor is not None:
        return factor
    wide = matrix.double()
    factor = _cholesky(wide)
    if factor is not None:
        notes.add(f"{what}: Cholesky failed in {matrix.dtype}, succeeded in float64")
        return factor.to(matrix.dtype)
    scale = wide.diagonal().abs().mean().clamp_min(1e-30)
    eye = torch.eye(matrix.shape[0], dtype=wide.dtype, device=wide.device)
    for jitter in JITTER_STEPS:
        factor = _cholesky(wide + jitter * scale * eye)
        if factor is not None:
            notes.add(f"{what}: Cholesky needed jitter {jitter:g}·mean(diag)")
            return factor.to(matrix.dtype)
    notes.add(f"{what}: not positive definite even with jitter; inverse not updated")
    return None


def spd_inverse(matrix: torch.Tensor, notes: Notes, what: str = "factor") -> torch.Tensor | None:
    """Inverse of a symmetric positive-definite matrix by Cholesky (the cheapest exact way)."""
    factor = spd_cholesky(matrix, notes, what)
    return None if factor is None else inverse_from_cholesky(factor)


def inverse_from_cholesky(lower: torch.Tensor) -> torch.Tensor:
    """(L Lᵀ)⁻¹ from L by LAPACK's potri (torch.cholesky_inverse): exactly symmetric, and on the
    autoencoder's 16 factors 2.5× faster than cholesky_solve against the identity at two
    threads, 3× at one (docs/benchmarks.md, "16, seventh pass"; an earlier pass had measured
    potri slower at two threads on a machine at load 9–16)."""
    return torch.cholesky_inverse(lower)


def add_to_diagonal(matrix: torch.Tensor, value: float | torch.Tensor) -> torch.Tensor:
    return matrix + value * torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)


def pi_correction(input_factor: torch.Tensor, output_factor: torch.Tensor) -> torch.Tensor:
    """π = sqrt((tr Ā / d_a) / (tr G / d_g)), the trace-norm balance of §6.3 (1 if degenerate)."""
    mean_a = input_factor.diagonal().mean()
    mean_g = output_factor.diagonal().mean()
    pi = torch.sqrt(mean_a / mean_g)
    return pi if bool(torch.isfinite(pi) and pi > 0) else torch.ones_like(pi)


def damp_factors(
    input_factor: torch.Tensor, output_factor: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Ā + πγI, G + γ/π I): factored Tikhonov damping of strength γ² (§6.3)."""
    if gamma == 0:
        return input_factor, output_factor
    pi = pi_correction(input_factor, output_factor)
    return add_to_diagonal(input_factor, pi * gamma), add_to_diagonal(output_factor, gamma / pi)


# ----------------------------------------------------------------------------- block-diagonal


def block_diagonal_precondition(
    gradient: torch.Tensor, input_inverse: torch.Tensor, output_inverse: torch.Tensor
) -> torch.Tensor:
    """F̌ᵢᵢ⁻¹ vec(V) = (Ā⁻¹ ⊗ G⁻¹) vec(V) = vec(G⁻¹ V Ā⁻¹)  (§4.2); V is (d_g, d_a)."""
    return output_inverse @ gradient @ input_inverse
