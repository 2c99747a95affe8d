"""The adaptive step's choices against brute force: the curvature of parameters outside K-FAC
layers (γ²I), and the γ search of §6.6 (the candidate with the lowest quadratic model wins).

Both build the exact quadratic model M(δ) = ∇hᵀδ + ½δᵀ(F + (λ + η)I)δ from explicit matrices
and per-example Jacobians, in float64.
"""

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp

import kfac.optimizer
from kfac import KFAC
from kfac.enums import LossFamily
from kfac.quadratic import fisher_rows
from tests.kfac import explicit

FAMILY = "cross_entropy"


def data(count: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, 4, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, 3, (count,), generator=generator)


def fisher_products(model: nn.Module, x, directions: list[dict]) -> torch.Tensor:
    """[vᵢᵀ F vⱼ] with F = E[Jᵀ F_R J] over all of the model's parameters: J·v by torch.func.jvp
    (batch norm normalising by the batch, its running statistics left alone)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    for m in norms:
        m.track_running_stats = False
    try:
        products = []
        for direction in directions:
            tangent = {name: direction[name] for name in params}
            outputs, product = jvp(lambda p: functional_call(model, p, (x,)), (params,), (tangent,))
            products.append(product)
    finally:
        for m in norms:
            m.track_running_stats = True
    output_fisher = explicit.output_fisher(outputs.detach(), FAMILY)
    return (
        torch.stack(
            [
                torch.stack([torch.einsum("nk,nkl,nl->", u, output_fisher, v) for v in products])
                for u in products
            ]
        )
        / x.shape[0]
    )


def by_name(model: nn.Module, vector: torch.Tensor, others: dict) -> dict:
    """A direction as a dict name → tensor: the Linear layers' part from the column-major
    [W b] vector (explicit's ordering), the other parameters from `others`."""
    return {**others, **explicit.linear_parameters(model, vector)}


def flat(model: nn.Module, values: dict) -> torch.Tensor:
    return torch.cat([values[name].reshape(-1) for name, _ in model.named_parameters()])


def snapshot(model: nn.Module) -> dict:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


# --- parameters outside K-FAC layers -----------------------------------------------------------


def batch_norm_net() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():  # a scale and shift away from (1, 0), so their gradients are generic
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model.double()


def test_batch_norm_parameters_get_the_damped_identity_as_curvature():
    """§6.3 with an identity block: a parameter outside the K-FAC layers has curvature γ²I, so
    its part of the proposal is Δ = −∇h/γ² next to the layers' −F̌⁻¹∇h; the first step is
    δ = αΔ, α minimising M along Δ with the exact F over all parameters, batch norm included."""
    damping, eta = 3.0, 1e-3  # γ² ≈ 3: the 1/γ² scaling is far from 1
    gamma2 = damping + eta
    model, (x, y) = batch_norm_net(), data()
    big_a, big_g = explicit.factors(*explicit.per_example_activations(model, x, y, FAMILY))
    layer_gradient = explicit.gradient_vector(model, x, y, FAMILY, eta)
    gradient = {name: p.grad + eta * p.detach() for name, p in model.named_parameters()}
    norm_names = ("1.weight", "1.bias")
    proposal = by_name(
        model,
        -explicit.block_diagonal_inverse(big_a, big_g, gamma2**0.5) @ layer_gradient,
        {name: -gradient[name] / gamma2 for name in norm_names},
    )
    v, g = flat(model, proposal), flat(model, gradient)
    curvature = fisher_products(model, x, [proposal])[0, 0] + gamma2 * v @ v
    alpha = -(g @ v) / curvature

    before = snapshot(model)
    opt = KFAC(
        model,
        FAMILY,
        fisher="empirical",
        damping=damping,
        weight_decay=eta,
        adapt_damping=False,
        stats_interval=1,
        inverse_interval=1,
        **explicit.WHOLE_BATCH_MODEL,
    )
    assert [b.name for b in opt.blocks] == ["0", "3"]
    opt.step(x, y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            p.detach() - before[name], alpha * proposal[name], rtol=1e-8, atol=1e-12, msg=name
        )


# --- γ search (§6.6) ---------------------------------------------------------------------------


# With λ = 0.03 the lowest candidate γω₂ wins, with λ = 0.3 the highest γ/ω₂: a search that
# keeps the worse one, keeps γ, or keeps the inverses of the last candidate tried fails one.
# The candidates' model values are checked too: here they rank alike without δ₀.
@pytest.mark.parametrize("damping", [0.03, 0.3])
def test_gamma_search_keeps_the_candidate_with_the_lowest_quadratic_model(damping, monkeypatch):
    """Statistics on step 1 only, a search on step 3 among {γω₂, γ, γ/ω₂}, ω₂ = sqrt(19/20)^T₂.
    For each candidate: Δ = −F̌⁻¹(γ)∇h from the step-1 factors, (α, μ) minimising the damped
    model over span{Δ, δ₀} (δ₀ = step 2's update); the optimizer must try the candidates with
    those model values, keep the γ whose minimum is lowest and take that candidate's step."""
    eta, decay, interval = 1e-3, 19 / 20, 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = data()
    big_a, big_g = explicit.factors(*explicit.per_example_activations(model, x, y, FAMILY))
    opt = KFAC(
        model,
        FAMILY,
        fisher="empirical",
        damping=damping,
        weight_decay=eta,
        adapt_damping=False,
        damping_decay=decay,
        gamma_search=True,
        gamma_interval=interval,
        stats_interval=4,
        inverse_interval=1,
        **explicit.WHOLE_BATCH_MODEL,
    )
    opt.step(x, y)
    second = explicit.parameter_vector(model).detach().clone()
    opt.step(x, y)
    theta = explicit.parameter_vector(model).detach().clone()
    previous = theta - second
    gradient = explicit.gradient_vector(model, x, y, FAMILY, eta)
    fisher = explicit.exact_fisher(model, x, FAMILY)
    gamma = (damping + eta) ** 0.5
    omega = decay ** (interval / 2)

    candidates = []
    for candidate in (gamma * omega, gamma, gamma / omega):
        proposal = -explicit.block_diagonal_inverse(big_a, big_g, candidate) @ gradient
        directions = torch.stack([proposal, previous])
        identity = torch.eye(len(theta), dtype=theta.dtype)
        damped = directions @ (fisher + (eta + damping) * identity) @ directions.T
        linear = directions @ gradient
        coefficients = -torch.linalg.solve(damped, linear)
        change = float(0.5 * coefficients @ damped @ coefficients + linear @ coefficients)
        candidates.append((change, candidate, coefficients @ directions))
    search_gamma, tried = kfac.optimizer.search_gamma, []

    def recording_search(gamma, group, damped_change):
        def recorded(candidate):
            tried.append((candidate, damped_change(candidate)))
            return tried[-1][1]

        return search_gamma(gamma, group, recorded)

    monkeypatch.setattr(kfac.optimizer, "search_gamma", recording_search)
    expected = [(candidate, change) for change, candidate, _ in candidates]
    candidates.sort(key=lambda c: c[0])
    (best, best_gamma, best_step), (runner_up, *_) = candidates[0], candidates[1]
    assert best < runner_up - 1e-6 * abs(best), candidates  # a choice the test can tell apart
    assert best_gamma != gamma, candidates  # and not merely "γ stays"

    opt.step(x, y)
    assert tried == [(pytest.approx(g, rel=1e-12), pytest.approx(c, rel=1e-8)) for g, c in expected]
    assert opt.diagnostics["gamma"] == pytest.approx(best_gamma, rel=1e-12)
    step = explicit.parameter_vector(model).detach() - theta
    torch.testing.assert_close(step, best_step, rtol=1e-8, atol=1e-12)


# --- the update's norm from the model's Gram ---------------------------------------------------


def test_the_reported_update_norm_is_the_norm_of_the_parameters_change():
    """With the quadratic model the optimizer reports ‖δ‖ from the Gram [vᵢᵀvⱼ] of Δ and δ₀
    rather than a pass over δ: every step's figure must be the norm of what θ moved by, the
    steps with momentum (where the cross term αμΔᵀδ₀ counts, with its sign) included."""
    model, (x, y) = batch_norm_net(), data()
    opt = KFAC(model, FAMILY, stats_interval=2, inverse_interval=2)  # the defaults otherwise
    momenta = []
    for _ in range(6):
        before = flat(model, snapshot(model))
        opt.step(x, y)
        moved = flat(model, snapshot(model)) - before
        momenta.append(opt.diagnostics["mu"])
        assert opt.diagnostics["update_norm"] == pytest.approx(float(moved.norm()), rel=1e-9)
    assert any(abs(mu) > 1e-3 for mu in momenta[1:])


@pytest.mark.parametrize("family", ["cross_entropy", "bce", "mse"])
def test_fisher_rows_are_each_example_s_products_with_its_explicit_output_fisher(family):
    """[(Jᵢvⱼ)ᵀ F_R(zᵢ) (Jᵢvₖ)] for three directions on five examples, against the explicit
    F_R(zᵢ) matrices in float64, and exactly symmetric."""
    generator = torch.Generator().manual_seed(11)
    outputs = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    products = [torch.randn(5, 4, generator=generator, dtype=torch.float64) for _ in range(3)]
    rows = fisher_rows(outputs, products, LossFamily(family))
    stacked = torch.stack(products, dim=1)  # (examples, directions, outputs)
    expected = stacked @ explicit.output_fisher(outputs, family) @ stacked.transpose(1, 2)
    torch.testing.assert_close(rows, expected, rtol=1e-12, atol=1e-14)
    assert torch.equal(rows, rows.transpose(1, 2))
