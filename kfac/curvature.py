"""Dense curvature matrices for inspection: the exact Fisher F and what K-FAC makes of it.

`fisher_matrices` gives, over one parameter ordering, F (from per-example gradients, §2.2), its
Kronecker-factored approximation F̃ (§3), (F̃ + λI)⁻¹ and the structured inverses the optimizer
uses: block-diagonal F̌⁻¹ (§4.2) and block-tridiagonal F̂⁻¹ (§4.3, Appendix B).  They serve the
dashboard and the tests, so they favour plain correctness over speed, with one rule: the
structured inverses are not re-derived here but built by applying the optimizer's own functions
(`kfac.inverses`) to the columns of the identity, so what is shown, and what the tests check
against brute force, is exactly what the optimizer applies to a gradient.  The factors are this
batch's expectations (§3), not the optimizer's running averages (§5).

Ordering (DESIGN.md): layer by layer in model order; within a layer the column-major vec of
W̄ = [W b] (d_g × d_a), so vec(DW̄) = vec(g āᵀ) = ā ⊗ g and (A ⊗ G) vec(V) = vec(G V Aᵀ), as
`torch.kron(A, G)` orders it.

Probe.  F has side Σ d_g·d_a, hopeless for real networks, so the matrices may be restricted to
some units: for layer i the output units R_i (rows of W̄) and input units C_i (columns of W̄, the
bias column always kept).  Restricted F is a principal submatrix of F; since the kept entries of
a Kronecker product are the Kronecker product of the kept entries, restricted F̃ has blocks
Ā(i−1,j−1)[C_i, C_j] ⊗ G(i,j)[R_i, R_j].  The inverses are those of the RESTRICTED structured
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
from torch.func import grad, vmap

from kfac.capture import ActivationCapture
from kfac.enums import LossFamily
from kfac.factors import cross_moment
from kfac.inverses import (
    Notes,
    block_diagonal_precondition,
    block_tridiagonal_precondition,
    damp_factors,
    spd_inverse,
    tridiagonal_inverse,
)
from kfac.layers import LinearBlock, find_blocks
from kfac.losses import negative_log_likelihood, sample_targets

MAX_PARAMETERS = 4096
"""The largest side of the dense matrices; bigger selections need a probe."""

_CHUNK_ELEMENTS = 1 << 22  # per-example gradients held at once (32 MB in float64)

Units = tuple[torch.Tensor, torch.Tensor]  # (rows of W̄ kept, columns of W̄ kept)


@dataclass
class CurvatureMatrices:
    """F, F̃ and the inverses over one ordering; `blocks[i]` is layer i's (start, stop) slice.

    `units[i]` holds the rows (output units) and columns (input units, the bias column being
    `in_features`) of layer i's W̄ that were kept; `spectra[name]` holds the ascending
    eigenvalues of that layer's full, undamped factors {"A": Ā, "G": G};
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
    layers: names of the nn.Linear modules to include (default: all, in model order).  The
        block-tridiagonal inverse treats consecutive selected layers as neighbours.
    damping: λ.  `kronecker_inverse` = (F̃ + λI)⁻¹; the structured inverses use the factored
        Tikhonov damping of §6.3 with γ = sqrt(λ): Ā + πγI and G + γ/π I, as the optimizer
        does (which uses γ = sqrt(λ + η); pass λ + η to see its matrices).  λ = 0: exact inverses.
    probe: None keeps every parameter (at most 4096); an int P <= 4096 keeps evenly spaced
        units, sharing P fairly between layers (see `probe_units`); a dict
        {layer name: (output unit indices, input unit indices)} names them (the bias column is
        always added; unnamed layers are kept whole).

    The model should be deterministic (eval mode if it has dropout): per-example gradients
    run it under torch.func.vmap.  Inverses that cannot be formed (a factor not positive
    definite even with jitter) are NaN matrices, with the reason in `notes`.
    """
    family = LossFamily(loss)
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping!r}")
    blocks = find_blocks(model, layers)
    if not blocks:
        raise ValueError("the model has no nn.Linear layer to build curvature matrices for")
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

    a_rows, g_rows, targets = _layer_statistics(model, blocks, inputs, targets, family, generator)
    notes = Notes()
    with torch.no_grad():
        exact = _exact_fisher(model, blocks, units, inputs, targets, family)
        # Kept columns of ā and rows of g: Ā(i−1,j−1)[C_i, C_j] = E[ā_i[C_i] ā_j[C_j]ᵀ].
        kept_a = [a[:, c.to(a.device)] for a, (_, c) in zip(a_rows, units, strict=True)]
        kept_g = [g[:, r.to(g.device)] for g, (r, _) in zip(g_rows, units, strict=True)]
        kronecker = exact.new_zeros(total, total)
        for i, (a, b) in enumerate(slices):
            for j, (c, d) in enumerate(slices):
                kronecker[a:b, c:d] = torch.kron(
                    cross_moment(kept_a[i], kept_a[j]), cross_moment(kept_g[i], kept_g[j])
                )
        eye = torch.eye(total, dtype=exact.dtype, device=exact.device)
        kron_inverse = spd_inverse(kronecker + damping * eye, notes, "F̃ + λI")
        full = [
            (cross_moment(a, a), cross_moment(g, g)) for a, g in zip(a_rows, g_rows, strict=True)
        ]
        diagonal, tridiagonal = _structured_inverses(
            blocks, full, units, kept_a, kept_g, damping, eye, notes
        )
        count = len(blocks)
        relative_errors = exact.new_zeros(count, count)
        for i, (a, b) in enumerate(slices):
            for j, (c, d) in enumerate(slices):
                reference = torch.linalg.matrix_norm(exact[a:b, c:d])
                difference = torch.linalg.matrix_norm(exact[a:b, c:d] - kronecker[a:b, c:d])
                relative_errors[i, j] = difference / reference if reference > 0 else math.nan
        spectra = {
            block.name: {"A": torch.linalg.eigvalsh(fa), "G": torch.linalg.eigvalsh(fg)}
            for block, (fa, fg) in zip(blocks, full, strict=True)
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


def _structured_inverses(blocks, full, units, kept_a, kept_g, damping, eye, notes):
    """F̌⁻¹ (§4.2) and F̂⁻¹ (§4.3, App. B) as dense matrices, by the optimizer's own code.

    The full factors are damped as the optimizer damps them (§6.3, γ = sqrt(λ), π from the
    full factors), then restricted to the probe's units; the cross factors Ā(i−1,i), G(i,i+1)
    are left undamped, as in the optimizer.  None for an inverse that failed (see `notes`).
    """
    gamma = math.sqrt(damping)
    damped = []
    for (factor_a, factor_g), (rows, cols) in zip(full, units, strict=True):
        damped_a, damped_g = damp_factors(factor_a, factor_g, gamma)
        cols, rows = cols.to(damped_a.device), rows.to(damped_g.device)
        damped.append((damped_a[cols][:, cols], damped_g[rows][:, rows]))
    shapes = [(len(rows), len(cols)) for rows, cols in units]

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
    pieces = tridiagonal_inverse(
        [a for a, _ in damped],
        [g for _, g in damped],
        [cross_moment(left, right) for left, right in pairwise(kept_a)],
        [cross_moment(left, right) for left, right in pairwise(kept_g)],
        notes,
    )
    tridiagonal = None
    if pieces is not None:
        tridiagonal = _dense_operator(
            lambda ms: block_tridiagonal_precondition(ms, pieces), shapes, eye
        )
    return diagonal, tridiagonal


def probe_units(blocks: list[LinearBlock], probe: int | dict[str, tuple] | None) -> list[Units]:
    """The (rows, columns) of each layer's W̄ to keep; columns index ā, bias column included.

    For an int budget P the layers share P by water-filling: smallest layers first, each taking
    at most an equal share of what is left and passing on what it cannot use, so small layers
    are kept whole and the rest is spread evenly.  Within its share a layer keeps the same
    fraction f of its output and of its input units, evenly spaced, f as large as fits.
    Deterministic, so successive snapshots of a run look at the same units.
    """
    everything = [(torch.arange(b.output_dim), torch.arange(b.input_dim)) for b in blocks]
    if probe is None:
        return everything
    if isinstance(probe, dict):
        unknown = set(probe) - {b.name for b in blocks}
        if unknown:
            raise ValueError(f"probe names layers that are not selected: {sorted(unknown)}")
        return [
            _named_units(b, *probe[b.name]) if b.name in probe else full
            for b, full in zip(blocks, everything, strict=True)
        ]
    budget = int(probe)
    if budget != probe or not 0 < budget <= MAX_PARAMETERS:
        raise ValueError(f"probe must be an int in [1, {MAX_PARAMETERS}], got {probe!r}")
    units: list[Units | None] = [None] * len(blocks)
    left = budget
    order = sorted(range(len(blocks)), key=lambda i: blocks[i].output_dim * blocks[i].input_dim)
    for position, i in enumerate(order):
        units[i] = rows, cols = _units_within(blocks[i], left // (len(order) - position))
        left -= len(rows) * len(cols)  # what a layer cannot use goes to the bigger ones
    return units


def _unit_range(count: int, total: int) -> torch.Tensor:
    """`count` evenly spaced indices out of range(total), distinct when count <= total."""
    return torch.linspace(0, total - 1, count, dtype=torch.float64).round().long()


def _units_within(block: LinearBlock, share: int) -> Units:
    inputs, bias = block.module.in_features, int(block.has_bias)

    def counts(fraction: float) -> tuple[int, int]:
        return max(1, round(fraction * block.output_dim)), max(1, round(fraction * inputs))

    def size(fraction: float) -> int:
        rows, cols = counts(fraction)
        return rows * (cols + bias)

    if size(0.0) > share:
        raise ValueError(
            f"probe budget too small: layer {block.name!r} needs at least {size(0.0)} parameters"
        )
    low, high = 0.0, 1.0
    if size(high) > share:
        for _ in range(60):  # sizes grow with the fraction, so bisect for the largest that fits
            middle = 0.5 * (low + high)
            low, high = (middle, high) if size(middle) <= share else (low, middle)
    else:
        low = high
    rows, cols = counts(low)
    columns = _unit_range(cols, inputs)
    if bias:
        columns = torch.cat([columns, torch.tensor([inputs])])
    return _unit_range(rows, block.output_dim), columns


def _named_units(block: LinearBlock, rows, cols) -> Units:
    rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    cols = torch.as_tensor(cols, dtype=torch.long).reshape(-1)
    limits = (("output", rows, block.output_dim), ("input", cols, block.module.in_features))
    for what, index, limit in limits:
        if index.numel() == 0 or index.min() < 0 or index.max() >= limit:
            raise ValueError(f"probe for {block.name!r}: {what} units must lie in [0, {limit})")
        if index.unique().numel() != index.numel():
            raise ValueError(f"probe for {block.name!r}: repeated {what} units")
    if block.has_bias:
        cols = torch.cat([cols, torch.tensor([block.module.in_features])])
    return rows, cols


def _layer_statistics(model, blocks, inputs, targets, family, generator):
    """Per-example rows ā and g = ∂(−log p(y|x))/∂s of every layer, and the targets used.

    One forward pass with the optimizer's own hooks; g comes from autograd on the sum (not the
    mean) of the per-example losses, so that each row is one example's gradient (§3).
    """
    capture = ActivationCapture(blocks)
    try:
        with torch.enable_grad(), capture.record():
            outputs = model(inputs)
            if isinstance(targets, str):
                if targets != "sampled":
                    raise ValueError(f'targets must be a tensor or "sampled", got {targets!r}')
                targets = sample_targets(outputs, family, generator)
            total = negative_log_likelihood(outputs, targets, family).sum()
            layer_outputs = [capture.outputs[b.name] for b in blocks]
            output_grads = torch.autograd.grad(total, layer_outputs)
        a_rows = [b.input_rows(capture.inputs[b.name]) for b in blocks]
        g_rows = [b.output_rows(g.detach()) for b, g in zip(blocks, output_grads, strict=True)]
    finally:
        capture.remove()
    if any(rows.shape[0] != inputs.shape[0] for rows in a_rows):
        raise ValueError("every selected layer must see one row per example (inputs of (N, d))")
    return a_rows, g_rows, targets.detach()


def _exact_fisher(model, blocks, units, inputs, targets, family) -> torch.Tensor:
    """F = E[∇log p(y|x) ∇log p(y|x)ᵀ] over the batch, from per-example gradients (§2.2).

    The per-example gradients come from torch.func: vmap over the examples of grad with respect
    to a zero perturbation δᵢ of the kept entries W̄ᵢ[R, C].  A forward hook adds δᵢ's effect,
    s[R] += δᵢ ā[C], to the layer's output (exactly what W̄ᵢ[R, C] += δᵢ does, once per call of
    the layer), so ∂(−log p)/∂δᵢ is the gradient of those parameters and no full per-example
    weight gradient is ever formed: the cost is one batched forward and backward pass.
    """
    device, dtype = blocks[0].module.weight.device, blocks[0].module.weight.dtype
    units = [(rows.to(device), cols.to(device)) for rows, cols in units]
    active: dict[str, torch.Tensor] = {}

    def hook_for(block, rows, cols):
        def hook(module, args, output):
            if block.name not in active:
                return None
            term = block.input_rows(args[0])[:, cols] @ active[block.name].T
            return output.index_add(-1, rows, term.reshape(*output.shape[:-1], -1))

        return hook

    def loss_of(deltas, x, y):
        active.update(zip((b.name for b in blocks), deltas, strict=True))
        try:
            output = model(x.unsqueeze(0))
        finally:
            active.clear()
        return negative_log_likelihood(output, y.unsqueeze(0), family).sum()

    zeros = [torch.zeros(len(r), len(c), dtype=dtype, device=device) for r, c in units]

    def kept_gradient(x, y):
        return torch.cat([d.T.reshape(-1) for d in grad(loss_of)(zeros, x, y)])  # vec, column-major

    # Memory per example: its kept gradient plus (roughly) the layers' activations.
    per_example = sum(r.numel() * c.numel() for r, c in units)
    per_example += sum(b.input_dim + b.output_dim for b in blocks)
    chunk = max(1, _CHUNK_ELEMENTS // per_example)
    handles = [
        b.module.register_forward_hook(hook_for(b, r, c))
        for b, (r, c) in zip(blocks, units, strict=True)
    ]
    try:
        fisher = 0
        for start in range(0, inputs.shape[0], chunk):
            stop = start + chunk
            rows = vmap(kept_gradient)(inputs[start:stop], targets[start:stop])
            fisher = fisher + rows.T @ rows
    finally:
        for handle in handles:
            handle.remove()
    return fisher / inputs.shape[0]


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
