"""kfac.curvature.fisher_matrices on nn.Conv2d layers (KFC) against brute force, in float64.

References share none of the implementation's code: per-example gradients from a Python loop of
torch.autograd.grad, patches ⟦ā⟧_t cut out by slicing (tests.kfac.explicit.explicit_patches),
Ω and Γ as explicit sums over examples and locations (double sums over location pairs for
layers on different grids), torch.kron for F̃ and torch.linalg.inv for every inverse.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kfac.curvature import fisher_matrices
from tests.kfac.explicit import conv_and_its_linear_twin, damped, explicit_patches
from tests.kfac.test_curvature import assert_close, assert_inverse, block_diagonal_part, nll_sum

LOSSES = ("cross_entropy", "mse")


def make_conv_net(name: str, seed: int = 0) -> tuple[nn.Sequential, tuple[int, ...]]:
    """A tiny float64 conv net and its input shape (C, H, W).

    grids: every layer on its own grid (4×4, 2×2, Linear), with padding and stride;
    same_grid: two conv layers on one 5×5 grid (padding, dilation, no bias), pooled to a Linear.
    """
    torch.manual_seed(seed)
    if name == "grids":
        net = nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(3, 2, 2, stride=2),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(8, 3),
        )
        shape = (2, 4, 4)
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.Sigmoid(),
            nn.Conv2d(2, 2, 3, padding=2, dilation=2, bias=False),
            nn.Tanh(),
            nn.AvgPool2d(5),
            nn.Flatten(),
            nn.Linear(2, 3),
        )
        shape = (1, 5, 5)
    for module in net:
        if isinstance(module, nn.Conv2d | nn.Linear):
            with torch.no_grad():
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, 1.5 / fan_in**0.5)
    return net.double(), shape


def make_batch(shape, loss, count=24, seed=1):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(count, *shape, generator=generator, dtype=torch.float64)
    if loss == "cross_entropy":
        return inputs, torch.randint(3, (count,), generator=generator)
    return inputs, torch.randn(count, 3, generator=generator, dtype=torch.float64)


def layers_of(net):
    return [m for m in net if isinstance(m, nn.Conv2d | nn.Linear)]


def vec_layer(module, weight, bias):
    """Column-major vec of [W b] with W the weight as (out, in·kh·kw)."""
    matrix = weight.reshape(weight.shape[0], -1)
    if bias is not None:
        matrix = torch.cat([matrix, bias[:, None]], 1)
    return matrix.T.reshape(-1)


def loop_fisher(net, inputs, targets, loss):
    rows = []
    for n in range(len(inputs)):
        params = [p for m in layers_of(net) for p in (m.weight, m.bias) if p is not None]
        grads = iter(
            torch.autograd.grad(nll_sum(net(inputs[n : n + 1]), targets[n : n + 1], loss), params)
        )
        rows.append(
            torch.cat(
                [
                    vec_layer(m, next(grads), next(grads) if m.bias is not None else None)
                    for m in layers_of(net)
                ]
            )
        )
    jacobian = torch.stack(rows)
    return jacobian.T @ jacobian / len(inputs)


def explicit_rows(net, inputs, targets, loss):
    """Per layer: patches ā (N, T, d_a), derivatives g (N, T, d_g) and the output grid, by a
    manual forward pass (a Linear layer has one location and the grid ())."""
    a_rows, outputs, grids = [], [], []
    x = inputs
    for module in net:
        if isinstance(module, nn.Conv2d):
            a_rows.append(explicit_patches(x.detach(), module))
        elif isinstance(module, nn.Linear):
            a = x.detach()
            if module.bias is not None:
                a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], 1)
            a_rows.append(a[:, None, :])
        x = module(x)
        if isinstance(module, nn.Conv2d | nn.Linear):
            outputs.append(x)
            grids.append(tuple(x.shape[2:]))
    grads = torch.autograd.grad(nll_sum(x, targets, loss), outputs)
    g_rows = [g.flatten(2).transpose(1, 2) if g.dim() == 4 else g[:, None, :] for g in grads]
    return a_rows, g_rows, grids


def explicit_factors(a_rows, g_rows, grids, i, j):
    """Ω(i, j), Γ(i, j) by their definitions (see kfac.curvature): locations paired on one
    grid; else every pair of locations (t, t'), Ω scaled by 1/√(|T_i||T_j|) and Γ averaged."""
    n, locations, others = len(a_rows[i]), a_rows[i].shape[1], a_rows[j].shape[1]
    if grids[i] == grids[j]:
        omega = sum(a_rows[i][:, t].T @ a_rows[j][:, t] for t in range(locations)) / n
        gamma = sum(g_rows[i][:, t].T @ g_rows[j][:, t] for t in range(locations)) / n
        return omega, gamma / locations
    pairs = [(t, u) for t in range(locations) for u in range(others)]
    omega = sum(a_rows[i][:, t].T @ a_rows[j][:, u] for t, u in pairs) / n
    gamma = sum(g_rows[i][:, t].T @ g_rows[j][:, u] for t, u in pairs) / (n * len(pairs))
    return omega / math.sqrt(locations * others), gamma


def explicit_kronecker(a_rows, g_rows, grids, diagonal=None):
    count = len(a_rows)
    rows = []
    for i in range(count):
        row = []
        for j in range(count):
            pair = diagonal[i] if i == j and diagonal is not None else None
            pair = pair or explicit_factors(a_rows, g_rows, grids, i, j)
            row.append(torch.kron(*pair))
        rows.append(torch.cat(row, 1))
    return torch.cat(rows)


@pytest.fixture(params=["grids", "same_grid"])
def conv_case(request):
    return request.param


@pytest.mark.parametrize("loss", LOSSES)
def test_exact_and_kronecker_match_brute_force(conv_case, loss):
    net, shape = make_conv_net(conv_case)
    inputs, targets = make_batch(shape, loss)
    result = fisher_matrices(net, inputs, targets, loss)
    sizes = [
        m.out_channels * (m.weight[0].numel() + (m.bias is not None))
        if isinstance(m, nn.Conv2d)
        else m.out_features * (m.in_features + 1)
        for m in layers_of(net)
    ]
    assert [b - a for a, b in result.blocks] == sizes
    assert_close(result.exact, loop_fisher(net, inputs, targets, loss), 1e-12)
    a_rows, g_rows, grids = explicit_rows(net, inputs, targets, loss)
    expected = explicit_kronecker(a_rows, g_rows, grids)
    for a, b in result.blocks:  # every block, the cross blocks between grids included
        for c, d in result.blocks:
            assert_close(result.kronecker[a:b, c:d], expected[a:b, c:d], 1e-12)
    assert torch.linalg.eigvalsh(result.kronecker).min() > -1e-12 * result.kronecker.norm()
    for name, a, g in zip(result.layer_names, a_rows, g_rows, strict=True):
        omega, gamma = explicit_factors([a], [g], [None], 0, 0)
        torch.testing.assert_close(result.spectra[name]["A"], torch.linalg.eigvalsh(omega))
        torch.testing.assert_close(result.spectra[name]["G"], torch.linalg.eigvalsh(gamma))


def test_inverses_match_brute_force(conv_case):
    damping, loss = 0.1, "mse"
    net, shape = make_conv_net(conv_case)
    inputs, targets = make_batch(shape, loss)
    result = fisher_matrices(net, inputs, targets, loss, damping=damping)
    a_rows, g_rows, grids = explicit_rows(net, inputs, targets, loss)
    kron = explicit_kronecker(a_rows, g_rows, grids)
    assert_inverse(
        result.kronecker_inverse, kron + damping * torch.eye(len(kron), dtype=kron.dtype)
    )
    pairs = [
        damped(*explicit_factors(a_rows, g_rows, grids, i, i), math.sqrt(damping))
        for i in range(len(a_rows))
    ]
    reference = explicit_kronecker(a_rows, g_rows, grids, pairs)
    assert_inverse(result.block_diagonal_inverse, block_diagonal_part(reference, result.blocks))
    # F̂⁻¹ is block-tridiagonal and F̂ equals the damped F̃ on the tridiagonal blocks.
    recovered = torch.linalg.inv(result.block_tridiagonal_inverse)
    for i, (a, b) in enumerate(result.blocks):
        for j, (c, d) in enumerate(result.blocks):
            if abs(i - j) > 1:
                assert torch.count_nonzero(result.block_tridiagonal_inverse[a:b, c:d]) == 0
            else:
                assert_close(recovered[a:b, c:d], reference[a:b, c:d], 1e-7)
    assert result.notes == []


def test_single_location_conv_gives_the_matrices_of_the_equivalent_linear_layer():
    conv_net, linear_net = conv_and_its_linear_twin()
    conv_net, linear_net = conv_net.double(), linear_net.double()
    inputs, targets = make_batch((2, 3, 3), "cross_entropy", count=30)
    conv = fisher_matrices(conv_net, inputs, targets, "cross_entropy", damping=0.05)
    linear = fisher_matrices(linear_net, inputs, targets, "cross_entropy", damping=0.05)
    assert conv.blocks == linear.blocks
    for name, matrix in linear.matrices.items():
        assert_close(conv.matrices[name], matrix, 1e-10)


def principal_indices(result, nets_layers):
    """Indices in the full ordering of W̄[rows, cols] of each layer (column-major)."""
    indices, start = [], 0
    for module, (rows, cols) in zip(nets_layers, result.units, strict=True):
        out = module.weight.shape[0]
        indices += [start + c * out + r for c in cols.tolist() for r in rows.tolist()]
        start += out * (module.weight[0].numel() + (module.bias is not None))
    return torch.tensor(indices)


def test_probe_keeps_output_channels_and_patch_coordinates(conv_case):
    net, shape = make_conv_net(conv_case)
    inputs, targets = make_batch(shape, "mse")
    full = fisher_matrices(net, inputs, targets, "mse", damping=0.1)
    first = layers_of(net)[0]
    patch = first.weight[0].numel()
    probe = {"0": ([1], [0, patch - 1])}  # one output channel, two patch coordinates
    restricted = fisher_matrices(net, inputs, targets, "mse", damping=0.1, probe=probe)
    rows, cols = restricted.units[0]
    assert rows.tolist() == [1] and cols.tolist() == [0, patch - 1, patch]  # + bias column
    kept = principal_indices(restricted, layers_of(net))
    for name in ("exact", "kronecker"):
        assert_close(getattr(restricted, name), getattr(full, name)[kept][:, kept], 1e-12)
    assert_inverse(
        restricted.kronecker_inverse,
        full.kronecker[kept][:, kept] + 0.1 * torch.eye(len(kept), dtype=torch.float64),
    )
    budget = fisher_matrices(net, inputs, targets, "mse", probe=40)
    assert budget.blocks[-1][1] <= 40
    kept = principal_indices(budget, layers_of(net))
    assert_close(budget.exact, full.exact[kept][:, kept], 1e-12)
    with pytest.raises(ValueError, match="input units"):
        fisher_matrices(net, inputs, targets, "mse", probe={"0": ([0], [patch])})


def test_batch_norm_net_in_eval_mode():
    """BN parameters are not KFC layers: the matrices cover the conv and Linear layers only."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)
    ).double()
    inputs, targets = make_batch((1, 4, 4), "cross_entropy")
    net(inputs)  # running statistics that are not the defaults
    net.eval()
    result = fisher_matrices(net, inputs, targets, "cross_entropy", damping=1e-3)
    assert result.layer_names == ["0", "4"] and result.blocks == [(0, 18), (18, 45)]
    assert_close(result.exact, loop_fisher(net, inputs, targets, "cross_entropy"), 1e-12)
