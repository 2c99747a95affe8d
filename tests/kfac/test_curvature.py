"""kfac.curvature.fisher_matrices against brute force that shares none of its code.

The references use a Python loop of torch.autograd.grad for per-example gradients, with the
losses written with torch.nn.functional (the implementation uses torch.func and kfac.losses),
a manual forward pass for ā and g (`tests.kfac.explicit`; the implementation uses the optimizer's
hooks), explicit torch.kron of einsum expectations for F̃, torch.linalg.inv of explicit dense
matrices for every inverse, and the dense Ξᵀ Λ Ξ of §4.3 for F̂⁻¹.  Since
the structured inverses are built from the optimizer's own functions, these tests also check
the optimizer's §4.2 / §4.3 / Appendix B code.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kfac.curvature import MAX_PARAMETERS, fisher_matrices
from kfac.inverses import Notes
from kfac.tridiagonal import kronecker_difference_inverse
from tests.kfac.explicit import (
    block_tridiagonal_inverse,
    damped,
    linear_layers,
    per_example_activations,
    vec_matrix,
)

# ----------------------------------------------------------------------------- brute force


def nll_sum(outputs, targets, loss):
    """Σ_n −log p(y_n|x_n), written directly with torch.nn.functional."""
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, targets, reduction="sum")
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(outputs, targets, reduction="sum")
    return 0.5 * ((outputs - targets) ** 2).sum()


def sizes_of(net):
    return [m.out_features * (m.in_features + int(m.bias is not None)) for m in linear_layers(net)]


def slices_of(net):
    bounds = [0]
    for size in sizes_of(net):
        bounds.append(bounds[-1] + size)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def loop_jacobian(net, inputs, targets, loss):
    """Per-example ∇(−log p(y|x)) as rows, from one torch.autograd.grad call per example."""
    rows = []
    for n in range(len(inputs)):
        params = [p for m in linear_layers(net) for p in (m.weight, m.bias) if p is not None]
        value = nll_sum(net(inputs[n : n + 1]), targets[n : n + 1], loss)
        grads = iter(torch.autograd.grad(value, params))
        parts = [
            vec_matrix(m, next(grads), next(grads) if m.bias is not None else None)
            for m in linear_layers(net)
        ]
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def loop_fisher(net, inputs, targets, loss):
    """E[∇log p ∇log pᵀ] over the batch."""
    jacobian = loop_jacobian(net, inputs, targets, loss)
    return jacobian.T @ jacobian / len(inputs)


def moment(left, right):
    return torch.einsum("ni,nj->ij", left, right) / len(left)


def explicit_kronecker(a_rows, g_rows, diagonal=None):
    """F̃ with blocks kron(E[ā_i ā_jᵀ], E[g_i g_jᵀ]); `diagonal` overrides the factor pairs
    of the diagonal blocks (for the damped versions)."""
    count = len(a_rows)
    rows = []
    for i in range(count):
        row = []
        for j in range(count):
            if i == j and diagonal is not None:
                row.append(torch.kron(*diagonal[i]))
            else:
                row.append(torch.kron(moment(a_rows[i], a_rows[j]), moment(g_rows[i], g_rows[j])))
        rows.append(torch.cat(row, 1))
    return torch.cat(rows)


def block_diagonal_part(matrix, slices):
    result = torch.zeros_like(matrix)
    for a, b in slices:
        result[a:b, a:b] = matrix[a:b, a:b]
    return result


def assert_close(actual, expected, rtol=1e-9):
    """Relative Frobenius closeness (the inverses can be poorly conditioned entry-wise)."""
    error = torch.linalg.matrix_norm(actual - expected)
    scale = torch.linalg.matrix_norm(expected)
    assert error <= rtol * scale, f"relative error {float(error / scale):.3e} > {rtol:.1e}"


def assert_inverse(actual, matrix):
    """actual ≈ matrix⁻¹ within the accuracy any inversion has: a multiple of κ(matrix)·ε."""
    rtol = 100 * float(torch.linalg.cond(matrix)) * torch.finfo(matrix.dtype).eps
    assert_close(actual, torch.linalg.inv(matrix), max(rtol, 1e-12))


def setup(build_net, build_batch, net_name, loss, count=64):
    net = build_net(net_name)
    inputs, targets = build_batch(net, loss, count)
    return net, inputs, targets


# ----------------------------------------------------------------------------- F and F̃


def test_exact_fisher_matches_per_example_loop(build_net, build_batch, net_name, loss):
    net, inputs, targets = setup(build_net, build_batch, net_name, loss)
    result = fisher_matrices(net, inputs, targets, loss)
    assert result.exact.dtype == torch.float64
    assert result.blocks == slices_of(net)
    assert_close(result.exact, loop_fisher(net, inputs, targets, loss), 1e-12)


def test_kronecker_matches_explicit_expectations(build_net, build_batch, net_name, loss):
    net, inputs, targets = setup(build_net, build_batch, net_name, loss)
    result = fisher_matrices(net, inputs, targets, loss)
    a_rows, g_rows = per_example_activations(net, inputs, targets, loss)
    expected = explicit_kronecker(a_rows, g_rows)
    for a, b in result.blocks:  # every block, off-diagonal included
        for c, d in result.blocks:
            assert_close(result.kronecker[a:b, c:d], expected[a:b, c:d], 1e-12)


def test_single_example_kronecker_equals_exact(build_net, build_batch, net_name, loss):
    net, inputs, targets = setup(build_net, build_batch, net_name, loss, count=1)
    result = fisher_matrices(net, inputs, targets, loss)
    for a, b in result.blocks:
        torch.testing.assert_close(
            result.kronecker[a:b, a:b], result.exact[a:b, a:b], rtol=1e-12, atol=1e-14
        )


# ----------------------------------------------------------------------------- inverses


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_kronecker_and_block_diagonal_inverses(build_net, build_batch, net_name, loss, damping):
    if loss == "cross_entropy" and damping == 0:
        pytest.skip("the output layer's G is singular for the categorical (g sums to 0)")
    net, inputs, targets = setup(build_net, build_batch, net_name, loss)
    result = fisher_matrices(net, inputs, targets, loss, damping=damping)
    a_rows, g_rows = per_example_activations(net, inputs, targets, loss)
    kron = explicit_kronecker(a_rows, g_rows)
    eye = torch.eye(len(kron), dtype=kron.dtype)
    assert_inverse(result.kronecker_inverse, kron + damping * eye)
    gamma = math.sqrt(damping)
    pairs = [damped(moment(a, a), moment(g, g), gamma) for a, g in zip(a_rows, g_rows, strict=True)]
    block_diagonal = block_diagonal_part(explicit_kronecker(a_rows, g_rows, pairs), result.blocks)
    assert_inverse(result.block_diagonal_inverse, block_diagonal)
    assert result.notes == []


@pytest.mark.parametrize("damping", [0.0, 0.1])
def test_block_tridiagonal_inverse(build_net, build_batch, net_name, loss, damping):
    """F̂⁻¹ is block-tridiagonal and F̂ agrees with (damped) F̃ on the tridiagonal blocks."""
    if loss == "cross_entropy" and damping == 0:
        pytest.skip("the output layer's G is singular for the categorical (g sums to 0)")
    net, inputs, targets = setup(build_net, build_batch, net_name, loss)
    result = fisher_matrices(net, inputs, targets, loss, damping=damping)
    a_rows, g_rows = per_example_activations(net, inputs, targets, loss)
    gamma = math.sqrt(damping)
    pairs = [damped(moment(a, a), moment(g, g), gamma) for a, g in zip(a_rows, g_rows, strict=True)]
    reference = explicit_kronecker(a_rows, g_rows, pairs)
    inverse, count = result.block_tridiagonal_inverse, len(result.blocks)
    recovered = torch.linalg.inv(inverse)
    assert_close(inverse, inverse.T, 1e-9)
    for i, (a, b) in enumerate(result.blocks):
        for j, (c, d) in enumerate(result.blocks):
            if abs(i - j) > 1:
                assert torch.count_nonzero(inverse[a:b, c:d]) == 0
            else:
                assert_close(recovered[a:b, c:d], reference[a:b, c:d], 1e-7)
    # And it is the dense Ξᵀ Λ Ξ of §4.3 built from explicit Kronecker products.
    big_a = {(i, j): moment(a_rows[i], a_rows[j]) for i in range(count) for j in range(count)}
    big_g = {(i, j): moment(g_rows[i], g_rows[j]) for i in range(count) for j in range(count)}
    assert_close(inverse, block_tridiagonal_inverse(big_a, big_g, gamma), 1e-7)
    assert result.notes == []


def test_appendix_b_kronecker_difference_inverse():
    """(A₁ ⊗ G₁ − A₂ ⊗ G₂)⁻¹ applied through the pencils' eigenbases (Appendix B)."""
    generator = torch.Generator().manual_seed(5)

    def spd(n):
        m = torch.randn(n, n, generator=generator, dtype=torch.float64)
        return m @ m.T + n * torch.eye(n, dtype=torch.float64)

    def inside(first):  # symmetric, indefinite, pencil eigenvalues in (−0.9, 0.9)
        n = len(first)
        lower = torch.linalg.cholesky(first)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
        values = 1.8 * torch.rand(n, generator=generator, dtype=torch.float64) - 0.9
        return lower @ q @ torch.diag(values) @ q.T @ lower.T

    a1, g1 = spd(4), spd(3)
    a2, g2 = inside(a1), inside(g1)
    notes = Notes()
    inverse = kronecker_difference_inverse(a1, g1, a2, g2, notes, "test")
    assert notes.messages == []
    columns = []
    for k in range(12):
        unit = torch.zeros(12, dtype=torch.float64)
        unit[k] = 1.0
        image = inverse.apply(unit.reshape(4, 3).T)  # unvec: column-major (d_g, d_a) = (3, 4)
        columns.append(image.T.reshape(-1))
    dense = torch.stack(columns, 1)
    expected = torch.linalg.inv(torch.kron(a1, g1) - torch.kron(a2, g2))
    assert_close(dense, expected, 1e-10)


# ----------------------------------------------------------------------------- probe


def principal_indices(net, units_by_layer):
    """Indices, in the full ordering, of W̄[rows, cols] (column-major, cols outermost)."""
    indices = []
    for (start, _), m, (rows, cols) in zip(
        slices_of(net), linear_layers(net), units_by_layer, strict=True
    ):
        indices += [start + c * m.out_features + r for c in cols for r in rows]
    return torch.tensor(indices)


def test_probe_restricts_to_principal_submatrices(build_net, build_batch):
    net, inputs, targets = setup(build_net, build_batch, "mixed_four_layers", "bce")
    full = fisher_matrices(net, inputs, targets, "bce")
    probe = {"0": ([0, 2], [1, 2]), "4": ([1], [0, 3])}  # layer "2" unnamed: kept whole
    restricted = fisher_matrices(net, inputs, targets, "bce", probe=probe)
    # The bias column (index in_features) is added to the layers that have one.
    expected_units = [([0, 2], [1, 2, 3]), ([0, 1, 2, 3], [0, 1, 2]), ([1], [0, 3, 4]), None]
    for (rows, cols), expected in zip(restricted.units, expected_units, strict=True):
        if expected is not None:
            assert rows.tolist() == expected[0] and cols.tolist() == expected[1]
    kept = principal_indices(net, [(r.tolist(), c.tolist()) for r, c in restricted.units])
    assert restricted.blocks[-1][1] == len(kept)
    for name in ("exact", "kronecker"):
        assert_close(getattr(restricted, name), getattr(full, name)[kept][:, kept], 1e-12)
    # The inverses are those of the restricted structured matrices.
    sub = full.kronecker[kept][:, kept]
    assert_inverse(restricted.kronecker_inverse, sub)
    assert_inverse(restricted.block_diagonal_inverse, block_diagonal_part(sub, restricted.blocks))
    recovered = torch.linalg.inv(restricted.block_tridiagonal_inverse)
    for i, (a, b) in enumerate(restricted.blocks):
        for j, (c, d) in enumerate(restricted.blocks):
            if abs(i - j) <= 1:
                assert_close(recovered[a:b, c:d], sub[a:b, c:d], 1e-7)


def test_singular_factors_are_reported_not_raised(build_net, build_batch):
    """For the categorical, g sums to 0 over the classes, so the output layer's G is singular:
    the undamped inverses then need jitter, and `notes` says so."""
    net, inputs, targets = setup(build_net, build_batch, "tanh_bias", "cross_entropy")
    result = fisher_matrices(net, inputs, targets, "cross_entropy")
    assert any("jitter" in note for note in result.notes)
    for matrix in result.matrices.values():
        assert torch.isfinite(matrix).all()
    with pytest.raises(ValueError, match="damping"):
        fisher_matrices(net, inputs, targets, "cross_entropy", damping=-1.0)


def test_integer_probe_is_deterministic_within_budget_and_keeps_biases(build_batch):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 3, bias=False)).double()
    inputs, targets = build_batch(net, "mse", 16)
    with pytest.raises(ValueError, match=f"limited to {MAX_PARAMETERS}; pass probe="):
        fisher_matrices(net, inputs, targets, "mse")  # 4160 + 192 parameters
    with pytest.raises(ValueError, match="probe must be an int"):
        fisher_matrices(net, inputs, targets, "mse", probe=MAX_PARAMETERS + 1)
    first = fisher_matrices(net, inputs, targets, "mse", probe=120)
    second = fisher_matrices(net, inputs, targets, "mse", probe=120)
    assert 100 <= first.blocks[-1][1] <= 120
    for (rows, cols), (rows2, cols2) in zip(first.units, second.units, strict=True):
        assert torch.equal(rows, rows2) and torch.equal(cols, cols2)
    (rows, cols), (_, last_cols) = first.units
    assert cols[-1] == 64 and cols[:-1].max() < 64  # the bias column, kept
    assert last_cols.max() < 64  # no bias in the last layer
    assert rows[0] == 0 and rows[-1] == 63 and len(set(rows.tolist())) == len(rows)
    kept = principal_indices(net, [(r.tolist(), c.tolist()) for r, c in first.units])
    jacobian = loop_jacobian(net, inputs, targets, "mse")[:, kept]
    assert_close(first.exact, jacobian.T @ jacobian / len(inputs), 1e-12)


def test_spectra_relative_errors_and_block_averages(build_net, build_batch):
    net, inputs, targets = setup(build_net, build_batch, "mixed_four_layers", "cross_entropy")
    probe = {"0": ([1, 2], [0])}
    result = fisher_matrices(net, inputs, targets, "cross_entropy", probe=probe)
    a_rows, g_rows = per_example_activations(net, inputs, targets, "cross_entropy")
    assert result.layer_names == ["0", "2", "4", "6"]
    for name, a, g in zip(result.layer_names, a_rows, g_rows, strict=True):
        # The spectra are those of the full factors, whatever the probe.
        torch.testing.assert_close(result.spectra[name]["A"], torch.linalg.eigvalsh(moment(a, a)))
        torch.testing.assert_close(result.spectra[name]["G"], torch.linalg.eigvalsh(moment(g, g)))
    count = len(result.blocks)
    assert result.relative_errors.shape == (count, count)
    averages = result.block_averages(result.exact)
    assert averages.shape == (count, count)
    for i, (a, b) in enumerate(result.blocks):
        for j, (c, d) in enumerate(result.blocks):
            exact, kron = result.exact[a:b, c:d], result.kronecker[a:b, c:d]
            expected = torch.sqrt(((exact - kron) ** 2).sum() / (exact**2).sum())
            torch.testing.assert_close(result.relative_errors[i, j], expected)
            torch.testing.assert_close(averages[i, j], exact.abs().sum() / exact.numel())
    assert (result.relative_errors > 0).all()  # K-FAC is an approximation for N > 1


def test_sampled_targets_are_reproducible_and_shared_by_f_and_f_tilde(build_net, build_batch, loss):
    net, inputs, _ = setup(build_net, build_batch, "tanh_bias", loss)

    def sampled(seed):
        generator = torch.Generator().manual_seed(seed)
        return fisher_matrices(net, inputs, "sampled", loss, damping=1e-3, generator=generator)

    first, again, other = sampled(3), sampled(3), sampled(4)
    torch.testing.assert_close(first.targets, again.targets, rtol=0, atol=0)
    torch.testing.assert_close(first.exact, again.exact, rtol=0, atol=0)
    assert not torch.equal(first.exact, other.exact)
    # Both matrices are those of the empirical Fisher at the drawn targets.
    empirical = fisher_matrices(net, inputs, first.targets, loss, damping=1e-3)
    for name, matrix in empirical.matrices.items():
        torch.testing.assert_close(getattr(first, name), matrix, rtol=0, atol=0)
    with pytest.raises(ValueError, match="sampled"):
        fisher_matrices(net, inputs, "true", loss)


def test_layer_selection_and_float32(build_net, build_batch):
    net, inputs, targets = setup(build_net, build_batch, "mixed_four_layers", "mse")
    full = fisher_matrices(net, inputs, targets, "mse")
    middle = fisher_matrices(net, inputs, targets, "mse", layers=["2", "4"])
    start, stop = full.blocks[1][0], full.blocks[2][1]
    assert middle.layer_names == ["2", "4"]
    assert_close(middle.exact, full.exact[start:stop, start:stop], 1e-12)
    assert_close(middle.kronecker, full.kronecker[start:stop, start:stop], 1e-12)
    single = net.float()
    result = fisher_matrices(single, inputs.float(), targets.float(), "mse", damping=1e-2)
    for matrix in result.matrices.values():
        assert matrix.dtype == torch.float32 and torch.isfinite(matrix).all()
    assert_close(result.exact.double(), full.exact, 1e-4)
    with pytest.raises(ValueError, match="no Linear"):
        fisher_matrices(net, inputs.float(), targets.float(), "mse", layers=["1"])
