"""F̂⁻¹ v through the exact rank structure (kfac.tridiagonal) against the dense Ξᵀ Λ Ξ of §4.3
built from explicit Kronecker products and explicit inverses (tests/kfac/explicit.py)."""

import pytest
import torch

from kfac.inverses import Notes
from kfac.tridiagonal import (
    FULL,
    SPLIT_INPUT,
    SPLIT_OUTPUT,
    block_tridiagonal_precondition,
    conditional_form,
    tridiagonal_inverse,
)
from tests.kfac import explicit

# (d_g, d_a) per layer; with 2 gradient rows, layer 0 takes SPLIT_INPUT (its Ā side has
# r_A = 2 of 5 coupled eigenpairs), layer 1 SPLIT_OUTPUT (r_G = 2 of 8) and layer 2 FULL
# although its Ā side is truncated (r_A = 2 of 3).
SHAPES = [(3, 5), (8, 2), (2, 3), (2, 2)]
GRADIENT_ROWS = 2


def random_problem(seed: int, shapes=SHAPES, statistics_rows: int = 40):
    """Damped factors and cross factors from correlated random rows, and gradient rows."""
    generator = torch.Generator().manual_seed(seed)

    def rows(count, width):
        return torch.randn(count, width, generator=generator, dtype=torch.float64)

    a_rows = [rows(statistics_rows, d_a) for _, d_a in shapes]
    g_rows = [rows(statistics_rows, d_g) for d_g, _ in shapes]
    for i in range(1, len(shapes)):  # neighbours correlated, so that Ψ ≠ 0
        width = min(a_rows[i].shape[1], a_rows[i - 1].shape[1])
        a_rows[i][:, :width] += 0.8 * a_rows[i - 1][:, :width]
        width = min(g_rows[i].shape[1], g_rows[i - 1].shape[1])
        g_rows[i][:, :width] -= 0.6 * g_rows[i - 1][:, :width]
    big_a, big_g = explicit.factors(a_rows, g_rows)
    for i, (d_g, d_a) in enumerate(shapes):  # damped diagonal blocks, undamped cross blocks
        big_a[i, i] = big_a[i, i] + 0.2 * torch.eye(d_a, dtype=torch.float64)
        big_g[i, i] = big_g[i, i] + 0.1 * torch.eye(d_g, dtype=torch.float64)
    gradient = [(rows(GRADIENT_ROWS, d_a), rows(GRADIENT_ROWS, d_g)) for d_g, d_a in shapes]
    return big_a, big_g, gradient


def pieces_of(big_a, big_g, count):
    notes = Notes()
    pieces = tridiagonal_inverse(
        [big_a[i, i] for i in range(count)],
        [big_g[i, i] for i in range(count)],
        [big_a[i, i + 1] for i in range(count - 1)],
        [big_g[i, i + 1] for i in range(count - 1)],
        notes,
    )
    assert notes.messages == []
    return pieces


def column_major(matrices):
    return torch.cat([m.T.reshape(-1) for m in matrices])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_form_is_the_explicit_f_hat_inverse(seed):
    """Rows and matrices, each layer in the form its costs choose, give F̂⁻¹ vec(V) of the
    dense Ξᵀ Λ Ξ: the truncation to the coupled eigenpairs and the split products drop
    nothing."""
    big_a, big_g, gradient = random_problem(seed)
    pieces = pieces_of(big_a, big_g, len(SHAPES))
    forms = [
        conditional_form(GRADIENT_ROWS, d_g, d_a, *piece.conditional.scale.shape)
        for (d_g, d_a), piece in zip(SHAPES, pieces[:-1], strict=False)
    ]
    assert forms == [SPLIT_INPUT, SPLIT_OUTPUT, FULL]
    assert [tuple(p.conditional.scale.shape) for p in pieces[:-1]] == [(3, 2), (2, 2), (2, 2)]

    matrices = [g.T @ a for a, g in gradient]
    expected = explicit.block_tridiagonal_inverse(big_a, big_g, 0.0) @ column_major(matrices)
    by_rows = block_tridiagonal_precondition(gradient, pieces)
    by_matrices = block_tridiagonal_precondition(matrices, pieces)
    torch.testing.assert_close(column_major(by_rows), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(column_major(by_matrices), expected, rtol=1e-9, atol=1e-12)


def test_a_stack_of_matrices_is_preconditioned_one_by_one():
    """kfac.curvature applies F̂⁻¹ to batches of unit vectors: (k, d_g, d_a) per layer."""
    big_a, big_g, gradient = random_problem(3)
    pieces = pieces_of(big_a, big_g, len(SHAPES))
    generator = torch.Generator().manual_seed(4)
    stacks = [
        torch.randn(5, d_g, d_a, generator=generator, dtype=torch.float64) for d_g, d_a in SHAPES
    ]
    together = block_tridiagonal_precondition(stacks, pieces)
    for k in range(5):
        alone = block_tridiagonal_precondition([s[k] for s in stacks], pieces)
        for got, want in zip(together, alone, strict=True):
            torch.testing.assert_close(got[k], want, rtol=1e-12, atol=1e-14)


def test_the_bench_profile_runs_on_a_small_autoencoder():
    """bench.bench_tridiagonal reaches into the optimizer; run its profile on a narrow net so
    that it cannot silently rot.  At η = 0 the wide layers take rows (and so does the floor's
    Ψ on their successors' gradients); the floor's products are a part of the step's."""
    from bench.bench_tridiagonal import profile
    from bench.kfac_vs_sgd import autoencoder

    runs = {eta: profile(8, 1, eta, model=lambda: autoencoder(0.05)) for eta in (0.0, 1e-5)}
    for eta, parts in runs.items():
        diag, tri = parts["kfac_fixed"], parts["kfac_tridiag_fixed"]
        assert (tri["rows"] > 0) == (eta == 0) and diag["rows"] == tri["rows"]
        floor = diag["multiply_adds"] + sum(
            tri[f"{part}_multiply_adds"] for part in ("dense", "coupled", "projected")
        )
        assert diag["multiply_adds"] < floor <= tri["multiply_adds"]
        assert all(tri[f"{part}_s"] > 0 for part in ("precondition", "inverse", "dense"))
    coupled = [runs[eta]["kfac_tridiag_fixed"]["coupled_multiply_adds"] for eta in (0.0, 1e-5)]
    assert coupled[0] < coupled[1]
