"""The optimizer's update against the paper's formulas evaluated with explicit matrices."""

import copy
import io

import pytest
import torch
from torch import nn

from kfac import KFAC
from kfac.losses import negative_log_likelihood
from tests.kfac import explicit
from tests.kfac.explicit import batch, tiny_net

FAMILIES = ["cross_entropy", "bce", "mse"]


FIXED_LR = 0.3


def one_fixed_step(model, x, y, family, **kwargs):
    before = explicit.parameter_vector(model).detach().clone()
    opt = KFAC(
        model,
        family,
        fisher="empirical",
        lr=FIXED_LR,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
        **kwargs,
    )
    opt.step(x, y)
    return explicit.parameter_vector(model).detach() - before, opt


def explicit_fixed_step(model, x, y, family, inverse, gamma, eta=0.0):
    """The step of `one_fixed_step` by the paper's formula, −lr · inverse(Ā, G, γ) · ∇h, from
    brute-force factors; with the per-example rows (ā, g) they were built from."""
    a_rows, g_rows = explicit.per_example_activations(model, x, y, family)
    big_a, big_g = explicit.factors(a_rows, g_rows)
    gradient = explicit.gradient_vector(model, x, y, family, eta)
    return -FIXED_LR * inverse(big_a, big_g, gamma) @ gradient, (a_rows, g_rows)


def every_step_kfac(model, x, y, family, eta, **kwargs):
    """A K-FAC with statistics, inverses and λ adaptation at every step and the quadratic model
    on the whole batch; with the explicit θ, ∇h (ℓ2 coefficient `eta`) and exact F before it."""
    opt = KFAC(
        model,
        family,
        weight_decay=eta,
        damping_interval=1,
        stats_interval=1,
        inverse_interval=1,
        **explicit.WHOLE_BATCH_MODEL,
        **kwargs,
    )
    theta0 = explicit.parameter_vector(model).detach().clone()
    gradient = explicit.gradient_vector(model, x, y, family, eta)
    return opt, theta0, gradient, explicit.exact_fisher(model, x, family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bias", [True, False])
def test_block_diagonal_update_is_damped_kronecker_inverse_times_gradient(family, bias):
    model, (x, y) = tiny_net(bias), batch(family)
    damping, eta = 0.05, 1e-3
    expected, _ = explicit_fixed_step(
        model, x, y, family, explicit.block_diagonal_inverse, (damping + eta) ** 0.5, eta
    )
    update, _ = one_fixed_step(model, x, y, family, damping=damping, weight_decay=eta)
    torch.testing.assert_close(update, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bias", [True, False])
def test_per_example_preconditioning_of_wide_layers_matches_the_formula(family, bias):
    """With η = 0 and layers wider than the batch, the optimizer multiplies (ĝG⁻¹)ᵀ(āĀ⁻¹)
    instead of G⁻¹∇W̄Ā⁻¹ (with a bias, āĀ⁻¹ by Ā⁻¹'s blocks); the update must be the same
    F̌⁻¹∇h."""
    model = tiny_net(bias, widths=(4, 30, 25, 3))
    x, y = batch(family, n=6)
    expected, _ = explicit_fixed_step(
        model, x, y, family, explicit.block_diagonal_inverse, 0.1**0.5
    )
    update, opt = one_fixed_step(model, x, y, family, damping=0.1, weight_decay=0.0)
    assert any(opt.preconditioner.prefers_per_example(b, 6) for b in opt.blocks)
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-11)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_products_are_the_formula_to_bfloat16_accuracy_and_follow_new_inverses(family):
    """precision="bfloat16" (opt-in) multiplies G⁻¹[∇W ∇b]Ā⁻¹ in bfloat16: F̌⁻¹∇h to ~2⁻⁸
    relative, not exactly; over steps with new statistics and inverses each step's update stays
    that close to the exact run's (the bfloat16 copies of the inverses are refreshed)."""
    model, (x, y) = tiny_net(), batch(family)
    damping, eta = 0.05, 1e-3
    expected, _ = explicit_fixed_step(
        model, x, y, family, explicit.block_diagonal_inverse, (damping + eta) ** 0.5, eta
    )
    exact_model = copy.deepcopy(model)
    update, opt = one_fixed_step(
        model, x, y, family, damping=damping, weight_decay=eta, precision="bfloat16"
    )
    assert 1e-5 < relative_error(update, expected) < 2e-2
    exact_update, exact = one_fixed_step(
        exact_model, x, y, family, damping=damping, weight_decay=eta
    )
    for seed in (2, 3, 4):  # other batches: the factors and their inverses move
        x, y = batch(family, seed=seed)
        before = explicit.parameter_vector(model).detach().clone()
        exact_before = explicit.parameter_vector(exact_model).detach().clone()
        opt.step(x, y)
        exact.step(x, y)
        step = explicit.parameter_vector(model).detach() - before
        exact_step = explicit.parameter_vector(exact_model).detach() - exact_before
        assert relative_error(step, exact_step) < 2e-2


def test_bfloat16_leaves_the_per_example_product_exact():
    """The option changes the dense products only: with η = 0 the wide layers' (ĝG⁻¹)ᵀ(āĀ⁻¹)
    stays in the parameters' dtype, so a net of such layers gets the exact F̌⁻¹∇h."""
    model = tiny_net(widths=(4, 30, 25, 3))
    x, y = batch("bce", n=6)
    expected, _ = explicit_fixed_step(model, x, y, "bce", explicit.block_diagonal_inverse, 0.1**0.5)
    update, opt = one_fixed_step(
        model, x, y, "bce", damping=0.1, weight_decay=0.0, precision="bfloat16"
    )
    start = 0
    for block in opt.blocks:  # 30 → 25 takes the rows; 4 → 30 and 25 → 3 are dense
        end = start + sum(p.numel() for p in block.parameters())
        got, want = update[start:end], expected[start:end]
        if opt.preconditioner.prefers_per_example(block, 6):
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-11)
        else:
            assert 1e-5 < relative_error(got, want) < 2e-2
        start = end
    assert [opt.preconditioner.prefers_per_example(b, 6) for b in opt.blocks] == [0, 1, 0]


@pytest.mark.parametrize("weight_decay", [0.0, 1e-3])
def test_preconditioned_weights_come_out_contiguous(weight_decay):
    """Dense and per-example products alike give each weight its own contiguous tensor, which
    the quadratic model's dot products read at BLAS speed (a strided view took twice as long)."""
    model = tiny_net(widths=(4, 30, 25, 3))
    x, y = batch("bce", n=6)
    _, opt = one_fixed_step(model, x, y, "bce", damping=0.1, weight_decay=weight_decay)
    _, per_example = opt._forward_backward(x, y, 2)
    gradient = [p.grad for p in opt.param_groups[0]["params"]]
    rows = opt.capture.per_example_rows(per_example)
    assert bool(rows) == (weight_decay == 0)
    assert all(part.is_contiguous() for part in opt._precondition(gradient, rows))


def test_the_per_example_product_follows_new_inverses():
    """Ā⁻¹'s blocks are kept between inversions; a new Ā⁻¹ (here 2Ā⁻¹) must be used at once:
    (ĝG⁻¹)ᵀ(ā 2Ā⁻¹) is twice the product, dense and per-example layers alike."""
    model = tiny_net(widths=(4, 30, 25, 3))
    x, y = batch("bce", n=6)
    _, opt = one_fixed_step(model, x, y, "bce", damping=0.1, weight_decay=0.0)
    _, per_example = opt._forward_backward(x, y, 2)
    gradient = [p.grad for p in opt.param_groups[0]["params"]]
    rows = opt.capture.per_example_rows(per_example)
    assert set(rows) == {opt.blocks[1].name}
    before = opt._precondition(gradient, rows)
    for block in opt.blocks:
        state = opt.block_state(block)
        state["input_inverse"] = 2 * state["input_inverse"]
    for got, was in zip(opt._precondition(gradient, rows), before, strict=True):
        torch.testing.assert_close(got, 2 * was, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "family, damping",
    # The softmax output's G is singular (Σ g = 0), so the undamped case uses the other two.
    [("bce", 0.0), ("mse", 0.0), ("cross_entropy", 0.1), ("bce", 0.1), ("mse", 0.1)],
)
def test_block_tridiagonal_update_is_explicit_f_hat_inverse_times_gradient(family, damping):
    model, (x, y) = tiny_net(), batch(family)
    expected, _ = explicit_fixed_step(
        model, x, y, family, explicit.block_tridiagonal_inverse, damping**0.5
    )
    update, _ = one_fixed_step(
        model, x, y, family, damping=damping, weight_decay=0.0, structure="block_tridiagonal"
    )
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("family", FAMILIES)
def test_per_example_block_tridiagonal_update_matches_the_matrix_path_and_the_formula(family):
    """With η = 0 and layers wider than the batch, the products of F̂⁻¹ that meet ∇W̄ go through
    the rows (ā, ĝ); the update must still be the explicit F̂⁻¹∇h, and each layer's result the
    same whichever layers come as rows and which as matrices."""
    model = tiny_net(widths=(4, 30, 25, 3))
    x, y = batch(family, n=6)
    expected, (a_rows, g_rows) = explicit_fixed_step(
        model, x, y, family, explicit.block_tridiagonal_inverse, 0.1**0.5
    )
    update, opt = one_fixed_step(
        model, x, y, family, damping=0.1, weight_decay=0.0, structure="block_tridiagonal"
    )
    assert any(opt.preconditioner.prefers_per_example(b, 6) for b in opt.blocks)
    torch.testing.assert_close(update, expected, rtol=1e-8, atol=1e-11)

    # Gradients of the mean loss: ĝ = g / N, and [∇W ∇b] = ĝᵀā layer by layer.
    rows = {b.name: (a, g / 6) for b, a, g in zip(opt.blocks, a_rows, g_rows, strict=True)}
    gradients = [b.split(g.T @ a) for b, (a, g) in zip(opt.blocks, rows.values(), strict=True)]
    by_matrix = opt.preconditioner.precondition(gradients)
    for names in ([b.name for b in opt.blocks], [opt.blocks[1].name]):
        chosen = {name: (rows[name][0][:, :-1], rows[name][1]) for name in names}  # a, not ā
        mixed = [
            None if b.name in chosen else g for b, g in zip(opt.blocks, gradients, strict=True)
        ]
        for got, want in zip(
            opt.preconditioner.precondition(mixed, chosen), by_matrix, strict=True
        ):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_mu_solve_the_exact_quadratic_model(family):
    """On the second step, (α, μ) minimise ½cᵀQc + bᵀc with Q = [vᵢᵀ(F + (λ+η)I)vⱼ] over
    v ∈ {Δ, δ₀} and F the exact mini-batch Fisher (§7)."""
    model, (x, y) = tiny_net(), batch(family)
    opt = KFAC(
        model,
        family,
        damping=0.5,
        weight_decay=1e-3,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
        **explicit.WHOLE_BATCH_MODEL,
    )
    opt.step(x, y)
    previous = explicit.parameter_vector(model).detach().clone()
    previous_update = torch.cat(
        [
            explicit.vec_matrix(
                m, opt.state[m.weight]["previous_update"], opt.state[m.bias]["previous_update"]
            )
            for m in explicit.linear_layers(model)
        ]
    )
    gradient = explicit.gradient_vector(model, x, y, family, 1e-3)
    fisher = explicit.exact_fisher(model, x, family)
    opt.step(x, y)
    d = opt.diagnostics
    delta = explicit.parameter_vector(model).detach() - previous
    proposal = (delta - d["mu"] * previous_update) / d["alpha"]
    directions = torch.stack([proposal, previous_update])
    curvature = (
        directions
        @ (fisher + (0.5 + 1e-3) * torch.eye(len(fisher), dtype=fisher.dtype))
        @ directions.T
    )
    linear = directions @ gradient
    alpha, mu = (-torch.linalg.solve(curvature, linear)).tolist()
    assert d["alpha"] == pytest.approx(alpha, rel=1e-7)
    assert d["mu"] == pytest.approx(mu, rel=1e-7, abs=1e-10)
    coefficients = torch.tensor([alpha, mu], dtype=torch.float64)
    undamped = curvature - 0.5 * directions @ directions.T  # M of h: F + ηI, no λ (§6.5)
    predicted = 0.5 * coefficients @ undamped @ coefficients + linear @ coefficients
    assert d["quadratic_model"] == pytest.approx(float(predicted), rel=1e-7)


def test_levenberg_marquardt_reduction_ratio_and_rule():
    """ρ = (h(θ+δ) − h(θ)) / (M(δ) − M(0)), M with F + ηI but not λ; λ ← ω₁λ if ρ > 3/4,
    λ/ω₁ if ρ < 1/4 (§6.5)."""
    family = "cross_entropy"
    model, (x, y) = tiny_net(), batch(family)
    eta, damping = 1e-3, 0.7
    opt, theta0, gradient, fisher = every_step_kfac(model, x, y, family, eta, damping=damping)

    def objective():
        with torch.no_grad():
            nll = negative_log_likelihood(model(x), y, family).mean()
            return float(nll) + 0.5 * eta * float(explicit.parameter_vector(model).pow(2).sum())

    h0 = objective()
    opt.step(x, y)
    delta = explicit.parameter_vector(model).detach() - theta0
    predicted = 0.5 * delta @ (fisher + eta * torch.eye(len(delta), dtype=delta.dtype)) @ delta
    predicted = float(predicted + gradient @ delta)
    rho = (objective() - h0) / predicted
    assert opt.diagnostics["rho"] == pytest.approx(rho, rel=1e-6)
    omega = (19 / 20) ** 1
    expected = damping * omega if rho > 0.75 else damping / omega if rho < 0.25 else damping
    assert opt.param_groups[0]["damping"] == pytest.approx(expected)


def test_levenberg_marquardt_rule_cases():
    from kfac.damping import levenberg_marquardt

    assert levenberg_marquardt(1.0, 0.9, 0.5) == 0.5
    assert levenberg_marquardt(1.0, 0.1, 0.5) == 2.0
    assert levenberg_marquardt(1.0, 0.5, 0.5) == 1.0
    assert levenberg_marquardt(1.0, float("nan"), 0.5) == 2.0


def train(model, opt, x, y, steps, seed=3):
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (16,), generator=gen)
        losses.append(float(opt.step(x[idx], y[idx])))
    return losses, gen


@pytest.mark.parametrize("structure", ["block_diagonal", "block_tridiagonal"])
def test_resume_continues_the_identical_trajectory(structure):
    family = "cross_entropy"
    x, y = batch(family, n=128)
    kwargs = dict(
        structure=structure,
        damping=1.0,
        stats_interval=2,
        inverse_interval=3,
        damping_interval=2,
        seed=11,
    )
    model = tiny_net()
    full, _ = train(model, KFAC(model, family, **kwargs), x, y, 12)

    model = tiny_net()
    opt = KFAC(model, family, **kwargs)
    first, gen = train(model, opt, x, y, 5)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed = tiny_net(seed=99)
    resumed.load_state_dict(saved["model"])
    opt2 = KFAC(resumed, family, **{**kwargs, "seed": 0})
    opt2.load_state_dict(saved["opt"])
    rest = []
    gen.set_state(saved["gen"])
    for _ in range(7):
        idx = torch.randint(0, x.shape[0], (16,), generator=gen)
        rest.append(float(opt2.step(x[idx], y[idx])))
    assert first + rest == full


class Shift(nn.Module):
    """Subtracts a constant vector: the centring reparameterisation of §10."""

    def __init__(self, shift):
        super().__init__()
        self.register_buffer("shift", shift)

    def forward(self, x):
        return x - self.shift


def test_update_is_invariant_to_centring_the_activations():
    """§10: with zero damping, a network and its centred reparameterisation (aᵢ − c, with the next
    bias absorbing W c) compute the same function after one K-FAC step.  (Gaussian outputs: the
    softmax's G is singular and cannot be inverted undamped.)"""
    family = "mse"
    x, y = batch(family, n=80)
    base = tiny_net(widths=(4, 3, 3))
    torch.manual_seed(5)
    shift = torch.randn(3, dtype=torch.float64)
    centred = copy.deepcopy(nn.Sequential(base[0], base[1], Shift(shift), nn.Linear(3, 3)).double())
    with torch.no_grad():
        centred[3].weight.copy_(base[2].weight)
        centred[3].bias.copy_(base[2].bias + base[2].weight @ shift)
    torch.testing.assert_close(centred(x), base(x))
    kwargs = dict(
        fisher="empirical",
        lr=0.5,
        damping=0.0,
        weight_decay=0.0,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
    )
    KFAC(base, family, **kwargs).step(x, y)
    KFAC(centred, family, **kwargs).step(x, y)
    torch.testing.assert_close(centred(x), base(x), rtol=1e-8, atol=1e-10)


def test_statistics_are_recorded_only_on_statistics_steps():
    family = "mse"
    model, (x, y) = tiny_net(), batch(family)
    opt = KFAC(model, family, stats_interval=3, inverse_interval=3)
    first = model[0].weight
    opt.step(x, y)
    factor_after_one = opt.state[first]["A"].clone()
    opt.step(x, y)
    assert opt.counters["stat_updates"] == 1
    assert torch.equal(opt.state[first]["A"], factor_after_one)
    opt.step(x, y)
    opt.step(x, y)
    assert opt.counters["stat_updates"] == 2


def test_stats_fraction_uses_the_first_examples():
    family = "mse"
    model, (x, y) = tiny_net(), batch(family)
    opt = KFAC(model, family, fisher="empirical", stats_fraction=0.25, stats_interval=1)
    opt.step(x, y)
    a_rows, _ = explicit.per_example_activations(tiny_net(), x[:16], y[:16], family)
    torch.testing.assert_close(opt.state[model[0].weight]["A"], a_rows[0].T @ a_rows[0] / 16)


def test_float32_runs_and_reports_diagnostics():
    model = tiny_net().float()
    x, y = batch("cross_entropy")
    opt = KFAC(model, "cross_entropy", structure="block_tridiagonal")
    for _ in range(6):
        loss = opt.step(x.float(), y)
    assert torch.isfinite(loss)
    assert set(opt.diagnostics) >= {
        "damping",
        "alpha",
        "mu",
        "rho",
        "update_norm",
        "quadratic_model",
    }


@pytest.mark.parametrize(
    "bad",
    [
        dict(stats_interval=0),
        dict(stats_fraction=1.5),
        dict(lr=-1.0),
        dict(gamma_search=True, gamma_interval=30, inverse_interval=20),
        dict(precision="float16"),
        dict(precision="bfloat16", structure="block_tridiagonal"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(bad):
    with pytest.raises(ValueError):
        KFAC(tiny_net(), "mse", **bad)


def test_gamma_search_runs_and_keeps_a_candidate():
    family = "bce"
    model, (x, y) = tiny_net(), batch(family)
    opt = KFAC(
        model,
        family,
        gamma_search=True,
        gamma_interval=2,
        inverse_interval=1,
        stats_interval=1,
        damping=1.0,
    )
    gammas = set()
    for _ in range(5):
        opt.step(x, y)
        gammas.add(round(opt.counters["gamma"], 12))
    assert len(gammas) > 1
