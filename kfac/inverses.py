"""Structured inverses of the Kronecker-factored Fisher (paper §4.2, §4.3, §6.3, Appendix B).

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


def _cholesky(matrix: torch.Tensor) -> torch.Tensor | None:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if info.item() != 0 or not torch.isfinite(factor).all():
        return None
    return factor


def spd_cholesky(matrix: torch.Tensor, notes: Notes, what: str = "factor") -> torch.Tensor | None:
    """Lower Cholesky factor of a symmetric positive-definite matrix, with fall-backs.

    Tries the matrix's own dtype, then float64, then float64 with growing jitter relative to
    the mean diagonal.  Returns None (and says so) for a matrix with NaN/Inf entries.
    """
    if not torch.isfinite(matrix).all():
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
    """Inverse of a symmetric positive-definite matrix by Cholesky (the cheapest exact way).

    cholesky_solve against the identity, because torch.cholesky_inverse is ~10× slower on CPU.
    """
    factor = spd_cholesky(matrix, notes, what)
    if factor is None:
        return None
    eye = torch.eye(matrix.shape[0], dtype=factor.dtype, device=factor.device)
    return torch.cholesky_solve(eye, factor)


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


# -------------------------------------------------------------------------- block-tridiagonal


def generalized_eigh(
    other: torch.Tensor, spd: torch.Tensor, notes: Notes, what: str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """K, s with Kᵀ·spd·K = I and Kᵀ·other·K = diag(s): the pencil (other, spd).

    With spd = L Lᵀ, the eigenvectors E of L⁻¹ other L⁻ᵀ give K = L⁻ᵀ E (Appendix B uses
    spd^(-1/2) instead of L⁻¹; any square root works and Cholesky is the cheapest).
    """
    lower = spd_cholesky(spd, notes, what)
    if lower is None:
        return None
    whitened = torch.linalg.solve_triangular(lower, other, upper=False)
    whitened = torch.linalg.solve_triangular(lower, whitened.T, upper=False)
    whitened = 0.5 * (whitened + whitened.T)
    try:
        values, vectors = torch.linalg.eigh(whitened)
    except RuntimeError:
        values, vectors = torch.linalg.eigh(whitened.double())
        values, vectors = values.to(spd.dtype), vectors.to(spd.dtype)
        notes.add(f"{what}: eigh failed in {spd.dtype}, succeeded in float64")
    basis = torch.linalg.solve_triangular(lower.T, vectors, upper=True)
    return basis, values


@dataclass
class KroneckerDifferenceInverse:
    """(A₁ ⊗ G₁ − A₂ ⊗ G₂)⁻¹ = (K_A ⊗ K_G) diag(1 / (1 − s_A ⊗ s_G)) (K_A ⊗ K_G)ᵀ (App. B)."""

    basis_a: torch.Tensor  # K_A, (d_a, d_a)
    basis_g: torch.Tensor  # K_G, (d_g, d_g)
    scale: torch.Tensor  # 1 / (1 − s_G s_Aᵀ), (d_g, d_a)

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """The inverse applied to vec(matrix), matrix of shape (d_g, d_a)."""
        inner = self.basis_g.T @ matrix @ self.basis_a
        return self.basis_g @ (inner * self.scale) @ self.basis_a.T


def kronecker_difference_inverse(
    a1: torch.Tensor, g1: torch.Tensor, a2: torch.Tensor, g2: torch.Tensor, notes: Notes, what: str
) -> KroneckerDifferenceInverse | None:
    """Appendix B for A₁ ⊗ G₁ − A₂ ⊗ G₂ with A₁, G₁ positive definite and A₂, G₂ symmetric."""
    pencil_a = generalized_eigh(a2, a1, notes, f"{what} Ā")
    pencil_g = generalized_eigh(g2, g1, notes, f"{what} G")
    if pencil_a is None or pencil_g is None:
        return None
    (basis_a, values_a), (basis_g, values_g) = pencil_a, pencil_g
    denominator = 1.0 - torch.outer(values_g, values_a)
    floor = torch.finfo(denominator.dtype).eps ** 0.5
    if bool((denominator < floor).any()):
        notes.add(f"{what}: Σ(i|i+1) near singular; its spectrum was floored at {floor:.1e}")
        denominator = denominator.clamp_min(floor)
    return KroneckerDifferenceInverse(basis_a, basis_g, 1.0 / denominator)


@dataclass
class TridiagonalLayerInverse:
    """One layer's part of F̂⁻¹ = Ξᵀ Λ Ξ (§4.3).

    For a layer i with a successor: Ψ(i,i+1) = Ψ^Ā ⊗ Ψ^G and the inverse of the conditional
    covariance Σ(i|i+1); for the last layer Σ_l = Ā ⊗ G, stored by its factor inverses.
    """

    psi_a: torch.Tensor | None = None  # Ā(i−1,i) Ā(i,i)⁻¹, (d_a(i), d_a(i+1))
    psi_g: torch.Tensor | None = None  # G(i,i+1) G(i+1,i+1)⁻¹, (d_g(i), d_g(i+1))
    conditional: KroneckerDifferenceInverse | None = None
    input_inverse: torch.Tensor | None = None  # last layer only
    output_inverse: torch.Tensor | None = None

    def apply_conditional_inverse(self, matrix: torch.Tensor) -> torch.Tensor:
        if self.conditional is not None:
            return self.conditional.apply(matrix)
        return block_diagonal_precondition(matrix, self.input_inverse, self.output_inverse)


def tridiagonal_inverse(
    input_factors: list[torch.Tensor],
    output_factors: list[torch.Tensor],
    input_cross: list[torch.Tensor],
    output_cross: list[torch.Tensor],
    notes: Notes,
) -> list[TridiagonalLayerInverse] | None:
    """The pieces of F̂⁻¹ from (already damped) diagonal factors and the cross factors.

    input_cross[i] = Ā(i−1, i) = E[āᵢ āᵢ₊₁ᵀ] between the inputs of layers i and i+1;
    output_cross[i] = G(i, i+1) = E[gᵢ gᵢ₊₁ᵀ].  Σ(i|i+1) = Ā ⊗ G − Ψ^Ā Ā' Ψ^Āᵀ ⊗ Ψ^G G' Ψ^Gᵀ,
    where Ψ^Ā Ā' Ψ^Āᵀ = Ā(i−1,i) Ā'⁻¹ Ā(i−1,i)ᵀ and likewise for G (§4.3).
    """
    count = len(input_factors)
    next_inverses = [None] * count
    for i in range(1, count):
        a_inv = spd_inverse(input_factors[i], notes, f"layer {i} Ā")
        g_inv = spd_inverse(output_factors[i], notes, f"layer {i} G")
        if a_inv is None or g_inv is None:
            return None
        next_inverses[i] = (a_inv, g_inv)
    pieces = []
    for i in range(count - 1):
        a_inv, g_inv = next_inverses[i + 1]
        psi_a = input_cross[i] @ a_inv
        psi_g = output_cross[i] @ g_inv
        explained_a = psi_a @ input_cross[i].T
        explained_g = psi_g @ output_cross[i].T
        conditional = kronecker_difference_inverse(
            input_factors[i],
            output_factors[i],
            0.5 * (explained_a + explained_a.T),
            0.5 * (explained_g + explained_g.T),
            notes,
            f"layer {i} Σ(i|i+1)",
        )
        if conditional is None:
            return None
        pieces.append(TridiagonalLayerInverse(psi_a=psi_a, psi_g=psi_g, conditional=conditional))
    last_a = spd_inverse(input_factors[-1], notes, f"layer {count - 1} Ā")
    last_g = spd_inverse(output_factors[-1], notes, f"layer {count - 1} G")
    if last_a is None or last_g is None:
        return None
    pieces.append(TridiagonalLayerInverse(input_inverse=last_a, output_inverse=last_g))
    return pieces


def block_tridiagonal_precondition(
    gradients: list[torch.Tensor], pieces: list[TridiagonalLayerInverse]
) -> list[torch.Tensor]:
    """F̂⁻¹ v = Ξᵀ Λ Ξ v with Ξ unit upper block-bidiagonal, −Ψ(i,i+1) above the diagonal,
    and Λ = diag(Σ(1|2)⁻¹, …, Σ(l−1|l)⁻¹, Σ_l⁻¹) (§4.3); every Ψ applied as vec(Ψ^G V Ψ^Āᵀ)."""
    count = len(gradients)
    conditioned = []
    for i in range(count):
        residual = gradients[i]
        if i < count - 1:
            piece = pieces[i]
            residual = residual - piece.psi_g @ gradients[i + 1] @ piece.psi_a.T
        conditioned.append(pieces[i].apply_conditional_inverse(residual))
    result = [conditioned[0]]
    for i in range(1, count):
        previous = pieces[i - 1]
        result.append(conditioned[i] - previous.psi_g.T @ conditioned[i - 1] @ previous.psi_a)
    return result
