"""The block-tridiagonal inverse F̂⁻¹ = Ξᵀ Λ Ξ (paper §4.3) and Appendix B's inverse of a
difference of Kronecker products, computed in pieces: per factor, per pair of layers, per layer.

A layer's gradient is its matrix V (d_g, d_a), or its rows (ā, ĝ) with V = ĝᵀā.  On each side
(Ā or G) of the conditional covariance
    Σ(i|i+1) = Ā ⊗ G − Ψ^Ā Ā' Ψ^Āᵀ ⊗ Ψ^G G' Ψ^Gᵀ,    Ψ = C F'⁻¹,
with F the layer's damped factor, F' its successor's and C = F(i, i+1) the cross factor, take
F = L Lᵀ, F' = L' L'ᵀ and the whitened cross X = L⁻¹ C L'⁻ᵀ (d × d').  Then Ψ F' Ψᵀ = L X Xᵀ Lᵀ,
and the eigenpairs X Xᵀ = E diag(s) Eᵀ give the pencil basis K = L⁻ᵀ E of Appendix B
(Kᵀ F K = I, Kᵀ Ψ F' Ψᵀ K = diag(s); L stands in for F^½), so that
    Σ(i|i+1)⁻¹ = (K_A ⊗ K_G) diag(1 / (1 − s_G s_Aᵀ)) (K_A ⊗ K_G)ᵀ.

Exact rank structure.  X has d' columns, so at most r = min(d, d') of the s can be non-zero;
order them first.  The other columns of E are orthogonal to the range of X, hence
  - the coupling M = Kᵀ Ψ = Eᵀ X L'⁻¹ is zero outside its first r rows: only M_r (r × d') is
    kept, and Ψ applied to the successor's gradient lands in the leading r_G × r_A block;
  - 1 / (1 − s_G s_Aᵀ) is 1 outside that block: only the block is stored and scaled;
  - a tall X (d > d') takes E from its QR, X = Q [R₁; 0]: the eigenvectors P of the d' × d'
    matrix R₁R₁ᵀ rotate Q's first d' columns, Q's others complete the basis, and
    X ᵀE_r = R₁ᵀ P.  The eigendecomposition is always of the smaller side.
Nothing is approximated: the dropped entries are zero in exact arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kfac.inverses import Notes, inverse_from_cholesky, spd_cholesky

Gradient = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""A layer's gradient: its matrix V (d_g, d_a), or per-example rows (ā, ĝ) with V = ĝᵀā."""


def association_costs(outer_left: int, rows: int, inner: int, outer_right: int) -> tuple[int, int]:
    """Multiply-adds of (outer_left × rows)(rows × inner)(inner × outer_right) computed
    left pair first and right pair first."""
    return outer_left * inner * (rows + outer_right), rows * outer_right * (inner + outer_left)


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
        left_first, right_first = association_costs(left.shape[0], rows, inner, right.shape[1])
        if left_first <= right_first:
            first, second = left @ middle, right
        else:
            first, second = left, middle @ right
    if out is None:
        return first @ second if alpha == 1 else (first @ second).mul_(alpha)
    if out.dim() > 2:  # a stack of matrices (kfac.curvature applies F̂⁻¹ to unit vectors)
        return out.add_(first @ second, alpha=alpha)
    return out.addmm_(first, second, alpha=alpha)


# ---------------------------------------------------------------------------- Appendix B


def symmetric_eigh(
    matrix: torch.Tensor, notes: Notes, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending eigenpairs of the symmetric part of `matrix`, retried in float64 on failure."""
    matrix = 0.5 * (matrix + matrix.T)
    try:
        return torch.linalg.eigh(matrix)
    except RuntimeError:
        values, vectors = torch.linalg.eigh(matrix.double())
        notes.add(f"{what}: eigh failed in {matrix.dtype}, succeeded in float64")
        return values.to(matrix.dtype), vectors.to(matrix.dtype)


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
    values, vectors = symmetric_eigh(whitened, notes, what)
    return torch.linalg.solve_triangular(lower.T, vectors, upper=True), values


@dataclass
class KroneckerDifferenceInverse:
    """(A₁ ⊗ G₁ − A₂ ⊗ G₂)⁻¹ = (K_A ⊗ K_G) diag(1 / (1 − s_A ⊗ s_G)) (K_A ⊗ K_G)ᵀ (App. B).

    `scale` holds 1 / (1 − s_G s_Aᵀ) for the leading r_G × r_A eigenpairs only: beyond them
    s_G s_A = 0 and the scale is 1 (see the module's rank structure)."""

    basis_a: torch.Tensor  # K_A, (d_a, d_a)
    basis_g: torch.Tensor  # K_G, (d_g, d_g)
    scale: torch.Tensor  # (r_G, r_A)

    def apply(self, matrix: torch.Tensor) -> torch.Tensor:
        """The inverse applied to vec(matrix), matrix of shape (d_g, d_a)."""
        inner = sandwich(self.basis_g.T, matrix, self.basis_a)
        rank_g, rank_a = self.scale.shape
        inner[..., :rank_g, :rank_a].mul_(self.scale)
        return sandwich(self.basis_g, inner, self.basis_a.T)


def difference_scale(
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
        basis_a, basis_g, difference_scale(values_a, values_g, notes, what)
    )


# -------------------------------------------------------------- the pieces of F̂⁻¹ (§4.3)


@dataclass
class ConditionalPencil:
    """One side (Ā or G) of Σ(i|i+1): the basis K (d, d) with Kᵀ F K = I and
    Kᵀ Ψ F' Ψᵀ K = diag(values, 0, …), the r = min(d, d') values that can be non-zero first;
    and the coupling M_r = K[:, :r]ᵀ Ψ (r, d')."""

    basis: torch.Tensor
    values: torch.Tensor
    coupling: torch.Tensor


def conditional_pencil(
    lower: torch.Tensor, following: torch.Tensor, cross: torch.Tensor, notes: Notes, what: str
) -> ConditionalPencil:
    """One side of Σ(i|i+1) from the Cholesky factors L of F(i,i), L' of F(i+1,i+1) and the
    cross factor C = F(i,i+1): the pencil (C F'⁻¹ Cᵀ, F) through X = L⁻¹ C L'⁻ᵀ, with
    K = L⁻ᵀE and M_r = (L'⁻ᵀ XᵀE_r)ᵀ (no explicit inverse of a factor)."""
    whitened = torch.linalg.solve_triangular(following, cross.T, upper=False)
    whitened = torch.linalg.solve_triangular(lower, whitened.T, upper=False)
    size, following_size = whitened.shape
    if size > following_size:  # X = Q [R₁; 0]: XXᵀ = Q₁ R₁R₁ᵀ Q₁ᵀ, zero on Q₂
        q, r = torch.linalg.qr(whitened, mode="complete")
        top = r[:following_size]
        values, rotation = symmetric_eigh(top @ top.T, notes, what)
        vectors = torch.cat([q[:, :following_size] @ rotation, q[:, following_size:]], 1)
        projected = top.T @ rotation
    else:
        values, vectors = symmetric_eigh(whitened @ whitened.T, notes, what)
        projected = whitened.T @ vectors
    basis = torch.linalg.solve_triangular(lower.T, vectors, upper=True)
    coupling = torch.linalg.solve_triangular(following.T, projected, upper=True).T
    return ConditionalPencil(basis, values, coupling)


@dataclass
class TridiagonalLayerInverse:
    """One layer's part of F̂⁻¹ = Ξᵀ Λ Ξ (§4.3).

    A layer i with a successor keeps Σ(i|i+1)⁻¹ in its Appendix-B eigenbasis (`conditional`)
    and Ψ(i,i+1) = Ψ^Ā ⊗ Ψ^G carried into that basis: the couplings M^Ā = K_A,rᵀ Ψ^Ā and
    M^G = K_G,rᵀ Ψ^G (the rows of KᵀΨ that can be non-zero), so that applying Ψ costs no
    product of its own (see `block_tridiagonal_precondition`).  The last layer keeps
    Σ_l⁻¹ = Ā⁻¹ ⊗ G⁻¹ by its factors' inverses.
    """

    coupling_a: torch.Tensor | None = None  # K_A,rᵀ Ā(i−1,i) Ā(i,i)⁻¹, (r_A, d_a(i+1))
    coupling_g: torch.Tensor | None = None  # K_G,rᵀ G(i,i+1) G(i+1,i+1)⁻¹, (r_G, d_g(i+1))
    conditional: KroneckerDifferenceInverse | None = None
    input_inverse: torch.Tensor | None = None  # last layer only
    output_inverse: torch.Tensor | None = None


def conditional_layer(
    pencil_a: ConditionalPencil, pencil_g: ConditionalPencil, notes: Notes, what: str
) -> TridiagonalLayerInverse:
    """Layer i's piece from its two pencils: Σ(i|i+1)⁻¹ and the couplings."""
    scale = difference_scale(pencil_a.values, pencil_g.values, notes, what)
    conditional = KroneckerDifferenceInverse(pencil_a.basis, pencil_g.basis, scale)
    return TridiagonalLayerInverse(pencil_a.coupling, pencil_g.coupling, conditional)


def tridiagonal_inverse(
    input_factors: list[torch.Tensor],
    output_factors: list[torch.Tensor],
    input_cross: list[torch.Tensor],
    output_cross: list[torch.Tensor],
    notes: Notes,
) -> list[TridiagonalLayerInverse] | None:
    """The pieces of F̂⁻¹ from (already damped) diagonal factors and the cross factors.

    input_cross[i] = Ā(i−1, i) = E[āᵢ āᵢ₊₁ᵀ] between the inputs of layers i and i+1;
    output_cross[i] = G(i, i+1) = E[gᵢ gᵢ₊₁ᵀ].  The work divides into one Cholesky per factor
    (`spd_cholesky`), one `conditional_pencil` per pair of layers and side, one cheap
    `conditional_layer` per layer with a successor, and the last layer's inverses.
    """
    lowers = {
        side: [spd_cholesky(f, notes, f"layer {i} {side}") for i, f in enumerate(factors)]
        for side, factors in (("Ā", input_factors), ("G", output_factors))
    }
    if any(lower is None for side in lowers.values() for lower in side):
        return None
    pieces = []
    for i, (cross_a, cross_g) in enumerate(zip(input_cross, output_cross, strict=True)):
        what = f"layer {i} Σ(i|i+1)"
        pencil_a, pencil_g = (
            conditional_pencil(lowers[side][i], lowers[side][i + 1], cross, notes, f"{what} {side}")
            for side, cross in (("Ā", cross_a), ("G", cross_g))
        )
        pieces.append(conditional_layer(pencil_a, pencil_g, notes, what))
    pieces.append(
        TridiagonalLayerInverse(
            input_inverse=inverse_from_cholesky(lowers["Ā"][-1]),
            output_inverse=inverse_from_cholesky(lowers["G"][-1]),
        )
    )
    return pieces


# --------------------------------------------------------------------------- F̂⁻¹ v


def block_tridiagonal_precondition(
    gradients: list[Gradient], pieces: list[TridiagonalLayerInverse]
) -> list[torch.Tensor]:
    """F̂⁻¹ v = Ξᵀ Λ Ξ v (§4.3), each layer's gradient a matrix V or its rows (ā, ĝ).

    Ξ is unit upper block-bidiagonal with −Ψ(i,i+1) above the diagonal and
    Λ = diag(Σ(1|2)⁻¹, …, Σ(l−1|l)⁻¹, Σ_l⁻¹).  In layer i's eigenbasis (Kᵀ · K),
        Sᵢ = K_Gᵀ Vᵢ K_A − [M_G Vᵢ₊₁ M_Aᵀ ∘ scaleᵢ on the leading r_G × r_A block]
    (the block scaled as a whole), and
        (F̂⁻¹ v)ᵢ = K_G Sᵢ K_Aᵀ − M_G⁽ⁱ⁻¹⁾ᵀ Sᵢ₋₁[r×r] M_A⁽ⁱ⁻¹⁾,
    the coupling of the previous layer needing only its block.  `_conditional_image` computes
    K_G Sᵢ K_Aᵀ in the cheapest of three exact forms; the last layer's Σ_l⁻¹ v_l is
    G⁻¹ V_l Ā⁻¹, through the rows when they come.
    """
    result, blocks = [], []
    for i, piece in enumerate(pieces[:-1]):
        image, block = _conditional_image(gradients[i], gradients[i + 1], piece)
        result.append(image)
        blocks.append(block)
    last = pieces[-1]
    result.append(sandwich(last.output_inverse, gradients[-1], last.input_inverse))
    for i, (piece, block) in enumerate(zip(pieces[:-1], blocks, strict=True)):
        sandwich(piece.coupling_g.T, block, piece.coupling_a, out=result[i + 1], alpha=-1.0)
    return result


FULL, SPLIT_OUTPUT, SPLIT_INPUT = "full", "split_output", "split_input"


def conditional_form(rows: int | None, size_g: int, size_a: int, rank_g: int, rank_a: int) -> str:
    """The cheapest exact way to K_G S K_Aᵀ for a layer (d_g, d_a) = (size_g, size_a) whose
    coupled block is r_G × r_A, given its gradient as `rows` rows (None: as a matrix).

    FULL: S whole, then K_G S K_Aᵀ: d_g·d_a·(d_g + d_a) after the rows' N·d_g·d_a.
    SPLIT_OUTPUT: S's rows beyond r_G are those of X⁰ = K_Gᵀ V K_A, untouched by Ψ and the
    scale, so K_G,⊥ X⁰_⊥ K_Aᵀ = (ĝ K_G,⊥ K_G,⊥ᵀ)ᵀ(ā Ā⁻¹) is a rank-N product and only the
    first r_G rows go through the two-sided one.  SPLIT_INPUT: the same over S's columns.
    Counts leave out what all forms share (ĝ K_G, ā K_A and the coupling).
    """
    if rows is None:
        return FULL
    n, d_g, d_a, r_g, r_a = rows, size_g, size_a, rank_g, rank_a
    costs = {
        FULL: n * d_g * d_a + d_g * d_a * (d_g + d_a),
        SPLIT_OUTPUT: n * r_g * d_a
        + min(association_costs(d_g, r_g, d_a, d_a))
        + n * (d_g - r_g) * d_g
        + n * d_a * d_a
        + n * d_g * d_a,
        SPLIT_INPUT: n * d_g * r_a
        + min(association_costs(d_g, d_g, r_a, d_a))
        + n * (d_a - r_a) * d_a
        + n * d_g * d_g
        + n * d_g * d_a,
    }
    return min(costs, key=costs.get)


def _conditional_image(
    gradient: Gradient, following: Gradient, piece: TridiagonalLayerInverse
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ(i|i+1)⁻¹ (Ξ v)ᵢ, Sᵢ's leading block): layer i's image before the coupling of layer
    i−1, and what layer i+1's coupling needs."""
    conditional = piece.conditional
    basis_g, basis_a, scale = conditional.basis_g, conditional.basis_a, conditional.scale
    coupled = sandwich(piece.coupling_g, following, piece.coupling_a.T)  # M_G Vᵢ₊₁ M_Aᵀ
    rows = gradient[0].shape[0] if isinstance(gradient, tuple) else None
    form = conditional_form(rows, basis_g.shape[0], basis_a.shape[0], *scale.shape)
    if form == SPLIT_OUTPUT:
        return _split_image(gradient, coupled, basis_g, basis_a, scale)
    if form == SPLIT_INPUT:  # SPLIT_OUTPUT of the transpose: Vᵀ = āᵀĝ, Sᵀ = K_Aᵀ Vᵀ K_G
        a_rows, g_rows = gradient
        image, block = _split_image((g_rows, a_rows), coupled.T, basis_a, basis_g, scale.T)
        return image.T, block.T
    inner = sandwich(basis_g.T, gradient, basis_a)
    rank_g, rank_a = scale.shape
    block = inner[..., :rank_g, :rank_a]
    block.sub_(coupled).mul_(scale)
    return sandwich(basis_g, inner, basis_a.T), block


def _split_image(
    gradient: tuple[torch.Tensor, torch.Tensor],
    coupled: torch.Tensor,
    basis_g: torch.Tensor,
    basis_a: torch.Tensor,
    scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K_G S K_Aᵀ as K_G,r S[:r_G] K_Aᵀ + (ĝ K_G,⊥ K_G,⊥ᵀ)ᵀ (ā K_A K_Aᵀ) (SPLIT_OUTPUT)."""
    a_rows, g_rows = gradient
    rank_g, rank_a = scale.shape
    projected_g, projected_a = g_rows @ basis_g, a_rows @ basis_a
    top = projected_g[:, :rank_g].T @ projected_a  # S's first r_G rows, before Ψ and the scale
    block = top[:, :rank_a]
    block.sub_(coupled).mul_(scale)
    image = sandwich(basis_g[:, :rank_g], top, basis_a.T)
    rest_g = projected_g[:, rank_g:] @ basis_g[:, rank_g:].T
    return image.addmm_(rest_g.T, projected_a @ basis_a.T), block
