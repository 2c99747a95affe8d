"""Fall-backs of the inversions and the KL clip: numerical trouble is reported, never raised."""

import math

import pytest
import torch
from torch import nn

from kfac import KFAC
from kfac.inverses import Notes, all_finite, spd_inverse
from kfac.tridiagonal import tridiagonal_inverse


def test_non_finite_factor_is_not_inverted_and_is_reported():
    notes = Notes()
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[0, 1] = float("nan")
    assert spd_inverse(matrix, notes, "A") is None
    assert "non-finite" in notes.messages[0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [(0, 0), (2, 1), (1, 2)])
def test_all_finite_finds_any_non_finite_entry_and_passes_a_sum_that_overflows(bad, where):
    matrix = torch.ones(3, 3)
    assert all_finite(matrix)
    matrix[where] = bad
    assert not all_finite(matrix)
    huge = torch.full((3, 3), 3e38)  # finite entries, the float32 sum is inf
    assert not torch.isfinite(huge.sum()) and all_finite(huge)


def test_singular_factor_is_inverted_with_jitter_and_reported():
    notes = Notes()
    v = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    singular = v.T @ v  # rank one
    inverse = spd_inverse(singular, notes, "G")
    assert inverse is not None and torch.isfinite(inverse).all()
    assert any("jitter" in m for m in notes.messages)


def test_float32_failure_is_retried_in_float64():
    notes = Notes()
    nearly = torch.tensor([[1.0, 1.0], [1.0, 1.0 + 1e-9]], dtype=torch.float64)
    inverse = spd_inverse(nearly.float(), notes, "A")
    assert inverse is not None
    assert notes.messages and ("float64" in notes.messages[0] or "jitter" in notes.messages[0])


def test_optimizer_survives_a_nan_factor_and_says_so():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 2, (32,))
    optimizer = KFAC(model, "cross_entropy", stats_interval=1, inverse_interval=1, damping=1.0)
    optimizer.step(x, y)
    optimizer.state[model[0].weight]["A"][0, 0] = float("nan")
    optimizer.param_groups[0]["stats_interval"] = 100  # keep the poisoned factor
    loss = optimizer.step(x, y)
    assert torch.isfinite(loss)
    assert optimizer.diagnostics["numerical_fallbacks"] > 0
    assert any("non-finite" in note for note in optimizer.notes)


def test_kl_clip_scales_the_fixed_learning_rate_step():
    """ν = min(1, sqrt(κ / (lr² Δᵀ∇h))) multiplies the step."""
    torch.manual_seed(1)
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randn(32, 2, dtype=torch.float64)
    updates = {}
    for clip in (None, 1e-6):
        torch.manual_seed(2)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = KFAC(model, "mse", lr=0.5, kl_clip=clip, adapt_damping=False, damping=0.1)
        optimizer.step(x, y)
        updates[clip] = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
        )
    # unclipped: δ = −lr·Δ, so Δᵀ∇h = −δᵀ∇h / lr; recover it from the gradient at θ₀
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    loss = 0.5 * (model(x) - y).pow(2).sum(1).mean()
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])
    kl = 0.5**2 * float(-(updates[None] @ grad) / 0.5)
    nu = min(1.0, math.sqrt(1e-6 / kl))
    assert nu < 1
    torch.testing.assert_close(updates[1e-6], nu * updates[None])


def test_tridiagonal_pieces_are_the_pencil_bases_and_the_couplings_into_them():
    """For each layer with a successor: Kᵀ F K = I and Kᵀ (C F'⁻¹ Cᵀ) K = diag(s, 0, …) on both
    sides, with at most r = min(d, d') non-zero s first (C has rank ≤ r); the coupling is the
    first r rows of Kᵀ Ψ, Ψ = C F'⁻¹, whose other rows vanish; and scale = 1 / (1 − s_G s_Aᵀ)
    over those r_G × r_A eigenpairs (§4.3, Appendix B).  The widths make X = L⁻¹ C L'⁻ᵀ tall
    (d > d': the QR path) and wide on each side."""
    generator = torch.Generator().manual_seed(3)
    widths_a, widths_g, n = (5, 4, 6), (4, 6, 3), 40
    a_rows = [torch.randn(n, d, generator=generator, dtype=torch.float64) for d in widths_a]
    g_rows = [torch.randn(n, d, generator=generator, dtype=torch.float64) for d in widths_g]
    a_rows[1] = a_rows[1] + a_rows[0][:, :4]  # correlated neighbours
    g_rows[2] = g_rows[2] + 0.5 * g_rows[1][:, :3]

    def moment(x, y):
        return x.T @ y / n

    factors_a = [moment(r, r) + 0.1 * torch.eye(r.shape[1], dtype=r.dtype) for r in a_rows]
    factors_g = [moment(r, r) + 0.1 * torch.eye(r.shape[1], dtype=r.dtype) for r in g_rows]
    cross_a = [moment(a_rows[i], a_rows[i + 1]) for i in range(2)]
    cross_g = [moment(g_rows[i], g_rows[i + 1]) for i in range(2)]
    notes = Notes()
    pieces = tridiagonal_inverse(factors_a, factors_g, cross_a, cross_g, notes)
    assert notes.messages == []
    shapes = []
    for i, piece in enumerate(pieces[:-1]):
        values = []
        for basis, coupling, factors, cross in (
            (piece.conditional.basis_a, piece.coupling_a, factors_a, cross_a),
            (piece.conditional.basis_g, piece.coupling_g, factors_g, cross_g),
        ):
            rank = min(cross[i].shape)
            psi = cross[i] @ torch.linalg.inv(factors[i + 1])
            eye = torch.eye(len(basis), dtype=basis.dtype)
            torch.testing.assert_close(basis.T @ factors[i] @ basis, eye)
            explained = basis.T @ psi @ factors[i + 1] @ psi.T @ basis
            torch.testing.assert_close(explained, torch.diag(explained.diagonal()))
            torch.testing.assert_close(
                explained.diagonal()[rank:], torch.zeros(len(basis) - rank, dtype=basis.dtype)
            )
            assert coupling.shape == (rank, len(factors[i + 1]))
            torch.testing.assert_close(coupling, (basis.T @ psi)[:rank])
            torch.testing.assert_close((basis.T @ psi)[rank:], torch.zeros_like(psi[rank:]))
            values.append(explained.diagonal()[:rank])
            shapes.append((len(basis), len(factors[i + 1])))
        torch.testing.assert_close(
            piece.conditional.scale, 1 / (1 - torch.outer(values[1], values[0]))
        )
    assert any(d > following for d, following in shapes)  # the QR path
    assert any(d < following for d, following in shapes)
    torch.testing.assert_close(pieces[-1].input_inverse, torch.linalg.inv(factors_a[-1]))
    torch.testing.assert_close(pieces[-1].output_inverse, torch.linalg.inv(factors_g[-1]))
