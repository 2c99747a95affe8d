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
    """Inverse of a symmetric positive-definite matrix by Cholesky (the cheapest exact way)."""
    factor = spd_cholesky(matrix, notes, what)
    return None if factor is None else inverse_from_cholesky(factor)


def inverse_from_cholesky(lower: torch.Tensor) -> torch.Tensor:
    """(L Lᵀ)⁻¹ by cholesky_solve against the identity (torch.cholesky_inverse is ~10× slower
    on CPU)."""
    eye = torch.eye(lower.shape[0], dtype=lower.dtype, device=lower.device)
    return torch.cholesky_solve(eye, lower)


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

Gradient = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""A layer's gradient: its matrix V (d_g, d_a), or per-example rows (ā, ĝ) with V = ĝᵀā."""


def sandwich(
    left: torch.Tensor,
    middle: Gradient,
    right: torch.Tensor,
    out: torch.Tensor | None = None,
    alpha: float = 1.0,
) -> torch.Tensor:
    """left · V · right, in the cheaper association, or through V's rows as (ĝ leftᵀ)ᵀ(ā right)
    (rank N: cheaper than either when the batch is smaller than the layer).  With `out`, the
    product is added α-fold into it by one gemm with β = 1: no temporary and no extra pass."""
    if isinstance(middle, tuple):
        a_rows, g_rows = middle
        first, second = (g_rows @ left.T).T, a_rows @ right
    else:
        rows, inner = middle.shape[-2:]
        outer_left, outer_right = left.shape[0], right.shape[1]
        if outer_left * inner * (rows + outer_right) <= rows * outer_right * (inner + outer_left):
            first, second = left @ middle, right
        else:
            first, second = left, middle @ right
    if out is None:
        return first @ second if alpha == 1 else (first @ second).mul_(alpha)
    if out.dim() > 2:  # a stack of matrices (kfac.curvature applies F̂⁻¹ to unit vectors)
        return out.add_(first @ second, alpha=alpha)
    return out.addmm_(first, second, alpha=alpha)


def _pencil_basis(
    whitened: torch.Tensor, lower: torch.Tensor, notes: Notes, what: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K = L⁻ᵀE, s and E from the eigenpairs (s, E) of the whitened pencil L⁻¹·other·L⁻ᵀ."""
    whitened = 0.5 * (whitened + whitened.T)
    try:
        values, vectors = torch.linalg.eigh(whitened)
    except RuntimeError:
        values, vectors = torch.linalg.eigh(whitened.double())
        values, vectors = values.to(lower.dtype), vectors.to(lower.dtype)
        notes.add(f"{what}: eigh failed in {lower.dtype}, succeeded in float64")
    return torch.linalg.solve_triangular(lower.T, vectors, upper=True), values, vectors


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
    basis, values, _ = _pencil_basis(whitened, lower, notes, what)
    return basis, values


@dataclass
class KroneckerDifferenceInverse:
    """(A₁ ⊗ G₁ − A₂ ⊗ G₂)⁻¹ = (K_A ⊗ K_G) diag(1 / (1 − s_A ⊗ s_G)) (K_A ⊗ K_G)ᵀ (App. B)."""

    basis_a: torch.Tensor  # K_A, (d_a, d_a)
    basis_g: torch.Tensor  # K_G, (d_g, d_g)
    scale: torch.Tensor  # 1 / (1 − s_G s_Aᵀ), (d_g, d_a)

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """The inverse applied to vec(matrix), matrix of shape (d_g, d_a)."""
        inner = sandwich(self.basis_g.T, matrix, self.basis_a).mul_(self.scale)
        return sandwich(self.basis_g, inner, self.basis_a.T)


def _difference_scale(
    values_a: torch.Tensor, values_g: torch.Tensor, notes: Notes, what: str
) -> torch.Tensor:
    """1 / (1 − s_G s_Aᵀ), its denominator floored at sqrt(eps) when Σ(i|i+1) is near singular."""
    denominator = 1.0 - torch.outer(values_g, values_a)
    floor = torch.finfo(denominator.dtype).eps ** 0.5
    if bool((denominator < floor).any()):
        notes.add(f"{what}: Σ(i|i+1) near singular; its spectrum was floored at {floor:.1e}")
        denominator = denominator.clamp_min(floor)
    return 1.0 / denominator


def kronecker_difference_inverse(
    a1: torch.Tensor, g1: torch.Tensor, a2: torch.Tensor, g2: torch.Tensor, notes: Notes, what: str
) -> KroneckerDifferenceInverse | None:
    """Appendix B for A₁ ⊗ G₁ − A₂ ⊗ G₂ with A₁, G₁ positive definite and A₂, G₂ symmetric."""
    pencil_a = generalized_eigh(a2, a1, notes, f"{what} Ā")
    pencil_g = generalized_eigh(g2, g1, notes, f"{what} G")
    if pencil_a is None or pencil_g is None:
        return None
    (basis_a, values_a), (basis_g, values_g) = pencil_a, pencil_g
    return KroneckerDifferenceInverse(
        basis_a, basis_g, _difference_scale(values_a, values_g, notes, what)
    )


@dataclass
class TridiagonalLayerInverse:
    """One layer's part of F̂⁻¹ = Ξᵀ Λ Ξ (§4.3).

    A layer i with a successor keeps Σ(i|i+1)⁻¹ in its Appendix-B eigenbasis (`conditional`)
    and Ψ(i,i+1) = Ψ^Ā ⊗ Ψ^G carried into that basis: the couplings M^Ā = K_Aᵀ Ψ^Ā and
    M^G = K_Gᵀ Ψ^G, so that applying Ψ costs no product of its own (see
    `block_tridiagonal_precondition`).  The last layer keeps Σ_l⁻¹ = Ā⁻¹ ⊗ G⁻¹ by its factors'
    inverses.
    """

    coupling_a: torch.Tensor | None = None  # K_Aᵀ Ā(i−1,i) Ā(i,i)⁻¹, (d_a(i), d_a(i+1))
    coupling_g: torch.Tensor | None = None  # K_Gᵀ G(i,i+1) G(i+1,i+1)⁻¹, (d_g(i), d_g(i+1))
    conditional: KroneckerDifferenceInverse | None = None
    input_inverse: torch.Tensor | None = None  # last layer only
    output_inverse: torch.Tensor | None = None


def _conditional_pencils(
    factors: list[torch.Tensor], crosses: list[torch.Tensor], notes: Notes, what: str
) -> tuple[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], torch.Tensor] | None:
    """One side (Ā or G) of Σ(i|i+1) for every layer with a successor, and the last inverse.

    With Fᵢ = Lᵢ Lᵢᵀ (one Cholesky per layer, shared by both pencils it enters) and the cross
    factor C = F(i,i+1), X = Lᵢ⁻¹ C Lᵢ₊₁⁻ᵀ whitens Ψ Fᵢ₊₁ Ψᵀ = C Fᵢ₊₁⁻¹ Cᵀ into X Xᵀ; its
    eigenvectors E give K = Lᵢ⁻ᵀE and the coupling Kᵀ Ψ = (Lᵢ₊₁⁻ᵀ Xᵀ E)ᵀ, without any
    explicit inverse of a factor.  Returns [(K, s, Kᵀ Ψ)] and F_l⁻¹, or None.
    """
    lowers = [spd_cholesky(f, notes, f"layer {i} {what}") for i, f in enumerate(factors)]
    if any(lower is None for lower in lowers):
        return None
    pencils = []
    for i, cross in enumerate(crosses):
        lower, following = lowers[i], lowers[i + 1]
        whitened_cross = torch.linalg.solve_triangular(following, cross.T, upper=False)
        whitened_cross = torch.linalg.solve_triangular(lower, whitened_cross.T, upper=False)
        basis, values, vectors = _pencil_basis(
            whitened_cross @ whitened_cross.T, lower, notes, f"layer {i} Σ(i|i+1) {what}"
        )
        coupling = torch.linalg.solve_triangular(
            following.T, whitened_cross.T @ vectors, upper=True
        ).T
        pencils.append((basis, values, coupling))
    return pencils, inverse_from_cholesky(lowers[-1])


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
    sides = [
        _conditional_pencils(input_factors, input_cross, notes, "Ā"),
        _conditional_pencils(output_factors, output_cross, notes, "G"),
    ]
    if sides[0] is None or sides[1] is None:
        return None
    (pencils_a, last_a), (pencils_g, last_g) = sides
    pieces = []
    for i, ((basis_a, values_a, coupling_a), (basis_g, values_g, coupling_g)) in enumerate(
        zip(pencils_a, pencils_g, strict=True)
    ):
        scale = _difference_scale(values_a, values_g, notes, f"layer {i} Σ(i|i+1)")
        conditional = KroneckerDifferenceInverse(basis_a, basis_g, scale)
        pieces.append(TridiagonalLayerInverse(coupling_a, coupling_g, conditional))
    pieces.append(TridiagonalLayerInverse(input_inverse=last_a, output_inverse=last_g))
    return pieces


def block_tridiagonal_precondition(
    gradients: list[Gradient], pieces: list[TridiagonalLayerInverse]
) -> list[torch.Tensor]:
    """F̂⁻¹ v = Ξᵀ Λ Ξ v (§4.3), each layer's gradient a matrix V or its rows (ā, ĝ).

    Ξ is unit upper block-bidiagonal with −Ψ(i,i+1) above the diagonal and
    Λ = diag(Σ(1|2)⁻¹, …, Σ(l−1|l)⁻¹, Σ_l⁻¹).  With Σ(i|i+1)⁻¹ = (K_A ⊗ K_G) diag(scale)
    (K_A ⊗ K_G)ᵀ and the couplings M = Kᵀ Ψ, Ψ folds into the changes of basis:
        Sᵢ = (K_Gᵀ Vᵢ K_A − M_G Vᵢ₊₁ M_Aᵀ) ∘ scaleᵢ          ((Λ Ξ v)ᵢ in layer i's eigenbasis)
        (F̂⁻¹ v)ᵢ = K_G Sᵢ K_Aᵀ − M_G⁽ⁱ⁻¹⁾ᵀ Sᵢ₋₁ M_A⁽ⁱ⁻¹⁾
    each line one pair of products plus one accumulating pair; the first line's are rank-N
    products when V comes as rows, and so is the last layer's Σ_l⁻¹ v_l = G⁻¹ V_l Ā⁻¹.
    """
    eigen = []
    for i, piece in enumerate(pieces[:-1]):
        conditional = piece.conditional
        inner = sandwich(conditional.basis_g.T, gradients[i], conditional.basis_a)
        sandwich(piece.coupling_g, gradients[i + 1], piece.coupling_a.T, out=inner, alpha=-1.0)
        eigen.append(inner.mul_(conditional.scale))
    result = [
        sandwich(piece.conditional.basis_g, inner, piece.conditional.basis_a.T)
        for piece, inner in zip(pieces[:-1], eigen, strict=True)
    ]
    last = pieces[-1]
    result.append(sandwich(last.output_inverse, gradients[-1], last.input_inverse))
    for i in range(1, len(pieces)):
        previous = pieces[i - 1]
        sandwich(
            previous.coupling_g.T, eigen[i - 1], previous.coupling_a, out=result[i], alpha=-1.0
        )
    return result
