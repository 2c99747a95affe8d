"""Dense curvature matrices for inspection: the exact Fisher F and what K-FAC / KFC make of it.

`fisher_matrices` gives, over one parameter ordering, F (from per-example gradients, §2.2,
`kfac.exact_fisher`), its Kronecker-factored approximation F̃ (§3), (F̃ + λI)⁻¹ and the
structured inverses the optimizer uses: block-diagonal F̌⁻¹ (§4.2) and block-tridiagonal F̂⁻¹
(§4.3, Appendix B).  They serve the dashboard and the tests, so they favour plain correctness
over speed, with one rule: the factors come from the optimizer's own layer code
(`kfac.layers`: rows ā, g, patches ⟦ā⟧_t, factors Ā, G, Ω, Γ) and the structured inverses are
built by applying the optimizer's own functions (`kfac.inverses`) to the columns of the
identity, so what is shown, and what the tests check against brute force, is exactly what
the optimizer applies to a gradient.  The factors are this batch's expectations (§3), not the
optimizer's running averages (§5).

Ordering (DESIGN.md): layer by layer in model order; within a layer the column-major vec of
W̄ = [W b] (d_g × d_a), so vec(DW̄) = vec(g āᵀ) = ā ⊗ g and (A ⊗ G) vec(V) = vec(G V Aᵀ), as
`torch.kron(A, G)` orders it.  A Conv2d layer's W is its weight seen as the matrix
(out_channels, in_channels·kh·kw), columns in `unfold` order.

Conv layers (KFC, Grosse & Martens 2016, §3).  A layer's rows are indexed by example n and
output location t ∈ T_i (a Linear layer has one location): patches ⟦ā⟧_t and derivatives Ds_t.
Block (i, j) of F̃ is Ω(i, j) ⊗ Γ(i, j), where
  - same location set (i = j, or two layers whose outputs have the same spatial grid, and any
    two Linear layers): locations are paired, t with t,
        Ω(i, j) = E[Σ_t ⟦ā_i⟧_t ⟦ā_j⟧_tᵀ],   Γ(i, j) = (1/|T|) E[Σ_t Ds_i,t Ds_j,tᵀ];
    for i = j these are KFC's Ω and Γ (independent activations and derivatives, spatial
    homogeneity, spatially uncorrelated derivatives, §3.1), for Linear layers K-FAC's Ā ⊗ G;
  - different location sets (a conv layer and a Linear layer, or two conv layers on different
    grids): no location of one corresponds to a location of the other.  We pool each layer
    over its locations, û_i = (1/√|T_i|) Σ_t ⟦ā_i⟧_t and v̂_i = mean_t Ds_i,t, and take
        Ω(i, j) = E[û_i û_jᵀ],   Γ(i, j) = E[v̂_i v̂_jᵀ].
    Why the 1/√|T_i|: keeping independence and taking the derivatives' cross moment equal for
    every pair (t, t') would give Ω(i, j) without it, but that assumption contradicts spatially
    uncorrelated derivatives within a layer, and the resulting F̃ is often indefinite (on the
    tiny nets of the tests, F̃ + 0.1·I was not invertible).  With it, Cauchy–Schwarz gives
    E[û_i û_iᵀ] ⪯ Ω(i, i) and E[v̂_i v̂_iᵀ] ⪯ Γ(i, i) (also for the stacked rows of a group of
    layers on one grid), so the block matrices [Ω(i, j)] and [Γ(i, j)] are positive
    semi-definite and so is F̃, their block-wise Kronecker (Khatri–Rao) product.
Both rules agree when both layers have a single location, so a conv layer with a 1×1 output is
exactly the equivalent Linear layer here too.  The optimizer refuses the block-tridiagonal
structure for conv layers; F̂⁻¹ here uses these cross factors for Ā(i−1, i) and G(i, i+1).

Probe: see `kfac.probe`.  Restricted F is a principal submatrix of F; since the kept entries
of a Kronecker product are the Kronecker product of the kept entries, restricted F̃ has blocks
Ω(i, j)[C_i, C_j] ⊗ Γ(i, j)[R_i, R_j].  The inverses are those of the RESTRICTED structured
matrices (submatrices of the full inverses would need the full matrices): (F̃_r + λI)⁻¹, and
F̌⁻¹, F̂⁻¹ from the restricted factors, damped on the full factors first (so π of §6.3 is the
optimizer's π).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch import nn

from kfac.capture import ActivationCapture
from kfac.enums import LossFamily
from kfac.exact_fisher import exact_fisher
from kfac.factors import cross_moment
from kfac.inverses import Notes, block_diagonal_precondition, damp_factors, spd_inverse
from kfac.layers import find_blocks
from kfac.losses import sample_targets
from kfac.probe import MAX_PARAMETERS, Units, probe_units
from kfac.statistics import output_gradients
from kfac.tridiagonal import block_tridiagonal_precondition, tridiagonal_inverse

__all__ = ["MAX_PARAMETERS", "CurvatureMatrices", "fisher_matrices", "probe_units"]


@dataclass
class CurvatureMatrices:
    """F, F̃ and the inverses over one ordering; `blocks[i]` is layer i's (start, stop) slice.

    `units[i]` holds the rows (output units) and columns (input units, the bias column being
    the last, `input_columns`) of layer i's W̄ that were kept; `spectra[name]` holds the
    ascending eigenvalues of that layer's full, undamped factors {"A": Ā or Ω, "G": G or Γ};
    `relative_errors[i, j]` = ‖F_ij − F̃_ij‖_F / ‖F_ij‖_F (NaN where F_ij = 0).  `notes` lists
    any numerical fall-back taken by an inversion (see `kfac.inverses.spd_cholesky`).
    """

    exact: torch.Tensor
    kronecker: torch.Tensor
    kronecker_inverse: torch.Tensor
    block_diagonal_inverse: torch.Tensor
    block_tridiagonal_inverse: torch.Tensor
    blocks: list[tuple[int, int]]
    layer_names: list[str]
    units: list[Units]
    spectra: dict[str, dict[str, torch.Tensor]]
    relative_errors: torch.Tensor
    targets: torch.Tensor
    damping: float
    notes: list[str] = field(default_factory=list)

    @property
    def matrices(self) -> dict[str, torch.Tensor]:
        """The five dense matrices by their DESIGN.md names (the snapshot's "matrices")."""
        names = ("exact", "kronecker", "kronecker_inverse", "block_diagonal_inverse")
        return {n: getattr(self, n) for n in (*names, "block_tridiagonal_inverse")}

    def block_averages(self, matrix: torch.Tensor) -> torch.Tensor:
        """l × l mean |entry| of each layer block of `matrix` (the paper's Fig. 3, right)."""
        count = len(self.blocks)
        result = matrix.new_zeros(count, count)
        for i, (a, b) in enumerate(self.blocks):
            for j, (c, d) in enumerate(self.blocks):
                result[i, j] = matrix[a:b, c:d].abs().mean()
        return result


def fisher_matrices(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor | str,
    loss: LossFamily | str,
    layers: list[str] | None = None,
    damping: float = 0.0,
    probe: int | dict[str, tuple] | None = None,
    generator: torch.Generator | None = None,
) -> CurvatureMatrices:
    """Exact and Kronecker-factored Fisher of the selected layers on the batch `inputs`.

    targets: a tensor gives the empirical Fisher at those targets; "sampled" draws y ~ p(y|x)
        once (with `generator`) for the true Fisher (§5), and F and F̃ both use those draws.
    layers: names of the nn.Linear / nn.Conv2d modules to include (default: all, in model
        order).  The block-tridiagonal inverse treats consecutive selected layers as neighbours.
    damping: λ.  `kronecker_inverse` = (F̃ + λI)⁻¹; the structured inverses use the factored
        Tikhonov damping of §6.3 with γ = sqrt(λ): Ā + πγI and G + γ/π I, as the optimizer
        does (which uses γ = sqrt(λ + η); pass λ + η to see its matrices).  λ = 0: exact inverses.
    probe: None keeps every parameter (at most 4096); an int P <= 4096 keeps evenly spaced
        units, sharing P fairly between layers (see `probe_units`); a dict
        {layer name: (output unit indices, input unit indices)} names them (the bias column is
        always added; unnamed layers are kept whole).

    The model should be deterministic and per-example (eval mode if it has dropout or batch
    norm): per-example gradients run it under torch.func.vmap, one example at a time.
    Inverses that cannot be formed (a factor not positive definite even with jitter) are NaN
    matrices, with the reason in `notes`.
    """
    family = LossFamily(loss)
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    blocks = find_blocks(model, layers)
    if not blocks:
        raise ValueError("the model has no nn.Linear/Conv2d layer to build curvature matrices for")
    units = probe_units(blocks, probe)
    sizes = [len(rows) * len(cols) for rows, cols in units]
    total = sum(sizes)
    if total > MAX_PARAMETERS:
        raise ValueError(
            f"the selected layers have {total} parameters but dense curvature matrices are "
            f"limited to {MAX_PARAMETERS}; pass probe={MAX_PARAMETERS} (or a dict of units per "
            "layer) to restrict them to a subset of units"
        )
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    slices = list(zip(bounds[:-1], bounds[1:], strict=True))

    statistics, targets = _layer_statistics(
        model, blocks, units, inputs, targets, family, generator
    )
    notes = Notes()
    with torch.no_grad():
        locations = [s.a.shape[1] for s in statistics]
        exact = exact_fisher(model, blocks, units, locations, inputs, targets, family)
        kronecker = exact.new_zeros(total, total)
        for i, (a, b) in enumerate(slices):
            for j, (c, d) in enumerate(slices):
                kronecker[a:b, c:d] = torch.kron(*_pair_factors(statistics[i], statistics[j]))
        eye = torch.eye(total, dtype=exact.dtype, device=exact.device)
        kron_inverse = spd_inverse(kronecker + damping * eye, notes, "F̃ + λI")
        diagonal, tridiagonal = _structured_inverses(blocks, statistics, damping, eye, notes)
        count = len(blocks)
        relative_errors = exact.new_zeros(count, count)
        for i, (a, b) in enumerate(slices):
            for j, (c, d) in enumerate(slices):
                reference = torch.linalg.matrix_norm(exact[a:b, c:d])
                difference = torch.linalg.matrix_norm(exact[a:b, c:d] - kronecker[a:b, c:d])
                relative_errors[i, j] = difference / reference if reference > 0 else math.nan
        spectra = {
            block.name: {"A": torch.linalg.eigvalsh(s.omega), "G": torch.linalg.eigvalsh(s.gamma)}
            for block, s in zip(blocks, statistics, strict=True)
        }
    nan = torch.full_like(exact, math.nan)  # stands for an inverse that could not be formed
    return CurvatureMatrices(
        exact=exact,
        kronecker=kronecker,
        kronecker_inverse=nan if kron_inverse is None else kron_inverse,
        block_diagonal_inverse=nan if diagonal is None else diagonal,
        block_tridiagonal_inverse=nan if tridiagonal is None else tridiagonal,
        blocks=slices,
        layer_names=[b.name for b in blocks],
        units=units,
        spectra=spectra,
        relative_errors=relative_errors,
        targets=targets,
        damping=float(damping),
        notes=notes.messages,
    )


def _structured_inverses(blocks, statistics, damping, eye, notes):
    """F̌⁻¹ (§4.2) and F̂⁻¹ (§4.3, App. B) as dense matrices, by the optimizer's own code.

    The full factors are damped as the optimizer damps them (§6.3, γ = sqrt(λ), π from the
    full factors), then restricted to the probe's units; the cross factors Ā(i−1,i), G(i,i+1)
    are left undamped, as in the optimizer.  None for an inverse that failed (see `notes`).
    """
    gamma = math.sqrt(damping)
    damped = []
    for s in statistics:
        damped_a, damped_g = damp_factors(s.omega, s.gamma, gamma)
        cols, rows = s.cols.to(damped_a.device), s.rows.to(damped_g.device)
        damped.append((damped_a[cols][:, cols], damped_g[rows][:, rows]))
    shapes = [(len(s.rows), len(s.cols)) for s in statistics]

    inverses = [
        (spd_inverse(a, notes, f"{b.name} Ā"), spd_inverse(g, notes, f"{b.name} G"))
        for b, (a, g) in zip(blocks, damped, strict=True)
    ]
    diagonal = None
    if all(x is not None for pair in inverses for x in pair):
        diagonal = _dense_operator(
            lambda ms: [
                block_diagonal_precondition(m, inverse_a, inverse_g)
                for m, (inverse_a, inverse_g) in zip(ms, inverses, strict=True)
            ],
            shapes,
            eye,
        )
    crosses = [_pair_factors(left, right) for left, right in pairwise(statistics)]
    pieces = tridiagonal_inverse(
        [a for a, _ in damped],
        [g for _, g in damped],
        [omega for omega, _ in crosses],
        [gamma for _, gamma in crosses],
        notes,
    )
    tridiagonal = None
    if pieces is not None:
        tridiagonal = _dense_operator(
            lambda ms: block_tridiagonal_precondition(ms, pieces), shapes, eye
        )
    return diagonal, tridiagonal


@dataclass
class _LayerStatistics:
    """One layer's share of the batch: its full factors (the optimizer's Ā/Ω and G/Γ, for the
    spectra and the damping) and the kept units' rows by example and location,
    a (N, |T|, |C|) and g (N, |T|, |R|), on the output grid `grid` (() for a Linear layer)."""

    omega: torch.Tensor
    gamma: torch.Tensor
    a: torch.Tensor
    g: torch.Tensor
    grid: tuple[int, ...]
    rows: torch.Tensor
    cols: torch.Tensor


def _pair_factors(left: _LayerStatistics, right: _LayerStatistics):
    """(Ω(i, j), Γ(i, j)) of block (i, j) of F̃ over the kept units (see the module docstring).

    On the diagonal these are the optimizer's factors (`input_factor`, `output_factor` of
    kfac.layers), restricted; elsewhere the same expectations over paired locations, or of
    the location-pooled rows û, v̂ when the two layers' location sets differ."""
    if left is right:
        cols, rows = left.cols.to(left.omega.device), left.rows.to(left.gamma.device)
        return left.omega[cols][:, cols], left.gamma[rows][:, rows]
    if left.grid == right.grid:
        count = left.a.shape[1]
        omega = count * cross_moment(left.a.flatten(0, 1), right.a.flatten(0, 1))
        return omega, cross_moment(left.g.flatten(0, 1), right.g.flatten(0, 1))
    scale = math.sqrt(left.a.shape[1] * right.a.shape[1])
    omega = cross_moment(left.a.sum(1), right.a.sum(1)) / scale
    return omega, cross_moment(left.g.mean(1), right.g.mean(1))


def _layer_statistics(model, blocks, units, inputs, targets, family, generator):
    """Every layer's `_LayerStatistics` on this batch, and the targets used.

    One forward pass with the optimizer's own hooks and its own g = Ds, one example's gradient
    a row (`kfac.statistics.output_gradients`, §3).  The rows are the optimizer's
    (`input_rows`, `output_rows`), so a conv layer's are its patches and derivatives at every
    location, example-major.
    """
    capture = ActivationCapture(blocks)
    try:
        with torch.enable_grad(), capture.record():
            outputs = model(inputs)
            if isinstance(targets, str):
                if targets != "sampled":
                    raise ValueError(f'targets must be a tensor or "sampled", got {targets!r}')
                targets = sample_targets(outputs, family, generator)
            output_grads = output_gradients(capture, blocks, outputs, targets, family)
        statistics = []
        for block, output_grad, (rows, cols) in zip(blocks, output_grads, units, strict=True):
            layer_input, output_grad = capture.inputs[block.name], output_grad.detach()
            a, g = block.input_rows(layer_input), block.output_rows(output_grad)
            if a.shape[0] % inputs.shape[0] or a.shape[0] != g.shape[0]:
                raise ValueError(
                    f"layer {block.name!r} must see the same number of rows (locations) for "
                    "every example: Linear inputs of (N, d), Conv2d inputs of (N, C, H, W)"
                )
            count = inputs.shape[0]
            statistics.append(
                _LayerStatistics(
                    omega=block.input_factor(layer_input),
                    gamma=block.output_factor(output_grad),
                    a=a[:, cols.to(a.device)].reshape(count, -1, len(cols)),
                    g=g[:, rows.to(g.device)].reshape(count, -1, len(rows)),
                    grid=tuple(output_grad.shape[2:]),
                    rows=rows,
                    cols=cols,
                )
            )
    finally:
        capture.remove()
    return statistics, targets.detach()


def _dense_operator(apply, shapes, eye, chunk: int = 512) -> torch.Tensor:
    """The matrix of a linear map on per-layer (d_g, d_a) matrices, column by column.

    `apply` takes a list of batched (k, d_g, d_a) matrices and returns the same shapes; column
    k of the result is vec(apply(unvec(e_k))), computed `chunk` columns at a time.
    """
    total = eye.shape[0]
    bounds = [0]
    for rows, cols in shapes:
        bounds.append(bounds[-1] + rows * cols)
    pieces = []
    for start in range(0, total, chunk):
        basis = eye[start : start + chunk]
        matrices = [
            basis[:, bounds[i] : bounds[i + 1]].reshape(-1, cols, rows).transpose(1, 2)
            for i, (rows, cols) in enumerate(shapes)
        ]
        images = apply(matrices)
        pieces.append(torch.cat([m.transpose(1, 2).reshape(m.shape[0], -1) for m in images], 1))
    return torch.cat(pieces).T
