"""How many rows the quadratic model reads (kfac.model_rows, `row_variance`, `economical_rows`),
against brute force: the decrease a subsample's minimiser loses, drawn many times, for the first
rows and for stratified ones; the integer that makes the most progress per unit of time; and the
default optimizer's step on the rows it chose (Bernoulli: the first; categorical: stratified),
from explicit per-example Fishers in float64."""

import copy
import math

import pytest
import torch

from kfac import KFAC
from kfac.model_rows import (
    MIN_MODEL_ROWS,
    ROW_VARIANCE_DECAY,
    economical_rows,
    most_curved,
    row_variance,
    stratified_rows,
    stratified_variance_scale,
)
from kfac.step_cost import in_model_rows, step_costs
from tests.kfac import explicit


def moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[fᵢ] and E[fᵢ ⊗ fᵢ] of per-row matrices (rows, k, k)."""
    return rows.mean(0), torch.einsum("ijk,ilm->jklm", rows, rows) / rows.shape[0]


def test_row_variance_predicts_the_decrease_a_subsample_loses():
    """s²/m is the share of the model's decrease ½cᵀ(F + D)c that the minimiser from m rows'
    Fisher gives up, on average over draws of the m rows (to first order in 1/m)."""
    generator = torch.Generator().manual_seed(0)
    population, draws, m = 4000, 3000, 400
    factors = torch.randn(population, 2, 3, generator=generator, dtype=torch.float64)
    scales = torch.exp(torch.randn(population, 1, 1, generator=generator, dtype=torch.float64))
    rows = scales * factors @ factors.transpose(1, 2)  # unequal rows, each positive semi-definite
    fisher, second_moment = moments(rows)
    euclidean = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    damping = 0.2 * euclidean
    linear = torch.tensor([-1.0, 0.4], dtype=torch.float64)
    best = -torch.linalg.solve(fisher + damping, linear)
    decrease = 0.5 * best @ (fisher + damping) @ best

    lost = []
    for _ in range(draws):
        sample = rows[torch.randint(0, population, (m,), generator=generator)].mean(0)
        error = -torch.linalg.solve(sample + damping, linear) - best
        lost.append(float(0.5 * error @ (fisher + damping) @ error / decrease))
    variance = row_variance(fisher, second_moment, fisher, damping, best)
    assert sum(lost) / draws == pytest.approx(variance / m, rel=0.1)


def test_stratified_rows_lose_the_share_their_drawn_rows_predict():
    """With the most curved half of m rows kept and the other half drawn from the rest
    (`stratified_rows`), the decrease given up is on average s²/m with s² the drawn rows'
    `row_variance` times `stratified_variance_scale`, (n/B)²(m/k) of the others' spread, up to
    the draw's finite-population factor (n − k)/(n − 1) that the first order leaves out.  A
    quarter of the batch, so that n/B = 7/8 matters; the curvature is the rows' trace."""
    generator = torch.Generator().manual_seed(1)
    population, draws, m = 800, 4000, 200
    factors = torch.randn(population, 2, 3, generator=generator, dtype=torch.float64)
    scales = torch.exp(2 * torch.randn(population, 1, 1, generator=generator, dtype=torch.float64))
    rows = scales * factors @ factors.transpose(1, 2)
    fisher = rows.mean(0)
    curvature = rows.diagonal(dim1=1, dim2=2).sum(1)
    euclidean = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    damping = 0.2 * euclidean
    linear = torch.tensor([-1.0, 0.4], dtype=torch.float64)
    best = -torch.linalg.solve(fisher + damping, linear)
    decrease = 0.5 * best @ (fisher + damping) @ best
    scale = stratified_variance_scale(population, m)
    top = most_curved(m)
    others, drawn = population - top, m - top

    lost, predicted = [], []
    for _ in range(draws):
        keys = torch.rand(population, generator=generator, dtype=torch.float64)
        chosen, weights = stratified_rows(curvature, m, keys)
        estimate = (weights.view(-1, 1, 1) * rows[chosen]).sum(0) / population
        error = -torch.linalg.solve(estimate + damping, linear) - best
        lost.append(float(0.5 * error @ (fisher + damping) @ error / decrease))
        variance = row_variance(*moments(rows[chosen[top:]]), fisher, damping, best)
        predicted.append(variance * scale / m)
    rest = rows[torch.sort(curvature, descending=True).indices[top:]]
    first_order = row_variance(*moments(rest), fisher, damping, best) * scale / m
    finite = (others - drawn) / (others - 1)
    assert sum(lost) / draws == pytest.approx(first_order * finite, rel=0.05)
    assert sum(predicted) / draws == pytest.approx(first_order, rel=0.05)
    # the first m rows would lose several times more: the stratification is worth its weights
    assert row_variance(*moments(rows), fisher, damping, best) / m > 3 * first_order


def test_a_singular_model_has_no_row_variance():
    """δ₀ = 0 with λ = η = 0: Q + D is singular and the rows say nothing (no error)."""
    rows = torch.zeros(8, 2, 2, dtype=torch.float64)
    rows[:, 0, 0] = torch.arange(1.0, 9.0)
    fisher, second_moment = moments(rows)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    coefficients = torch.tensor([0.5, 0.0], dtype=torch.float64)
    assert row_variance(fisher, second_moment, fisher, zero, coefficients) is None


@pytest.mark.parametrize("variance", [0.0, 0.3, 4.0, 12.0, 500.0])
@pytest.mark.parametrize(("batch", "cost"), [(100, 150.0), (256, 390.0), (1000, 970.0)])
def test_economical_rows_make_the_most_progress_per_unit_of_time(variance, batch, cost):
    """(1 − s²/m)/(R + m) over the allowed whole numbers of rows is largest at the count chosen."""
    cap = batch // 4

    def rate(rows: int) -> float:
        return (1 - variance / rows) / (cost + rows)

    chosen = economical_rows(variance, cost, cap)
    allowed = range(min(MIN_MODEL_ROWS, cap), cap + 1)
    assert chosen in allowed
    assert rate(chosen) >= max(map(rate, allowed)) - 1e-9 * abs(max(map(rate, allowed)))


@pytest.mark.parametrize("family", ["bce", "cross_entropy"])
def test_the_default_step_solves_the_model_of_its_economical_rows(family):
    """Defaults (sampled targets; the Bernoulli's rows are the batch's first, the categorical's
    stratified): given s² = 8 in the optimizer's state, the second step's α, μ minimise the
    exact quadratic model with the Fisher of economical_rows(8, R, 64) = 45 rows, R the step's
    cost counted for this batch (kfac.step_cost; ℓ2 phase, so every product dense), weighted,
    and the state's s² becomes the running average with this step's, from the explicit
    Fishers of the drawn rows (all 45, or the 23 after the most curved) times their scale."""
    size = 256
    model = explicit.tiny_net(widths=(4, 6, 5, 3))
    x, y = explicit.batch(family, n=size)
    opt = KFAC(model, family)
    opt.step(x, y)
    prior = 8.0
    opt.counters["row_variance"] = prior
    group, recorded = opt.param_groups[0], opt.capture.rows_per_example
    cost = in_model_rows(step_costs(opt.blocks, recorded, size, set(), group, True))
    rows = economical_rows(prior, cost, size // 4)
    assert MIN_MODEL_ROWS < rows < size // 4  # neither bound decides
    eta, damping = opt.weight_decay(2), opt.param_groups[0]["damping"]
    before = copy.deepcopy(model)
    previous_update = torch.cat(
        [
            explicit.vec_matrix(
                m, opt.state[m.weight]["previous_update"], opt.state[m.bias]["previous_update"]
            )
            for m in explicit.linear_layers(model)
        ]
    )
    gradient = explicit.gradient_vector(model, x, y, family, eta)

    opt.step(x, y)
    chosen = torch.arange(size)[opt.quadratic.rows]
    assert len(chosen) == rows
    first = family == "bce"
    drawn, scale = (0, 1.0) if first else (most_curved(rows), stratified_variance_scale(size, rows))
    per_row = torch.stack([explicit.exact_fisher(before, x[i : i + 1], family) for i in chosen])
    alpha, mu = opt.diagnostics["alpha"], opt.diagnostics["mu"]
    moved = explicit.parameter_vector(model) - explicit.parameter_vector(before)
    proposal = (moved.detach() - mu * previous_update) / alpha
    directions = torch.stack([proposal, previous_update])
    row_models = directions @ per_row @ directions.T  # (rows, 2, 2): fᵢ over span{Δ, δ₀}
    weights = opt.quadratic.weights.double().view(-1, 1, 1)
    fisher = (weights * row_models).sum(0) / (rows if first else size)
    euclidean = directions @ directions.T
    curvature, damped = fisher + eta * euclidean, damping * euclidean
    solution = -torch.linalg.solve(curvature + damped, directions @ gradient)
    assert abs(float(solution[1])) < 1  # the free minimum, not the |μ| <= 1 edge
    assert alpha == pytest.approx(float(solution[0]), rel=1e-7)
    assert mu == pytest.approx(float(solution[1]), rel=1e-7, abs=1e-10)
    observed = scale * row_variance(*moments(row_models[drawn:]), curvature, damped, solution)
    expected = ROW_VARIANCE_DECAY * prior + (1 - ROW_VARIANCE_DECAY) * observed
    assert opt.counters["row_variance"] == pytest.approx(expected, rel=1e-6)
    assert not math.isclose(observed, prior, rel_tol=0.1)  # the average moved by this step's


def test_fixed_rows_keep_the_whole_share_and_stratified_rows_adapt():
    """With adapt_quadratic_rows off the model reads the whole quadratic_fraction whatever the
    row variance; with it on, the categorical's stratified rows shrink as the first ones do."""
    size = 256
    for family, options in (
        ("bce", {"adapt_quadratic_rows": False}),
        ("cross_entropy", {"adapt_quadratic_rows": False}),
        ("cross_entropy", {}),
    ):
        model = explicit.tiny_net(widths=(4, 6, 5, 3))
        x, y = explicit.batch(family, n=size)
        opt = KFAC(model, family, **options)
        opt.step(x, y)
        opt.counters["row_variance"] = 0.0
        opt.step(x, y)
        expected = size // 4 if options else MIN_MODEL_ROWS
        assert len(torch.arange(size)[opt.quadratic.rows]) == expected
        if family == "cross_entropy":  # the weighted rows still stand for the whole batch
            assert float(opt.quadratic.weights.sum()) == pytest.approx(size)


def test_a_state_dict_from_before_adapted_rows_keeps_the_whole_share():
    """Checkpoints saved before `adapt_quadratic_rows` (and the row variance in the counters)
    existed resume as they were trained: on the whole quarter; a new one keeps its variance."""
    size = 256
    x, y = explicit.batch("bce", n=size)
    optimizer = KFAC(explicit.tiny_net(widths=(4, 6, 5, 3)), "bce")
    optimizer.step(x, y)
    optimizer.counters["row_variance"] = 0.0
    state = optimizer.state_dict()
    assert state["kfac"]["counters"]["row_variance"] == 0.0
    old = copy.deepcopy(state)
    del old["param_groups"][0]["adapt_quadratic_rows"]
    del old["kfac"]["counters"]["row_variance"]
    for saved, rows in ((old, size // 4), (state, MIN_MODEL_ROWS)):
        resumed = KFAC(explicit.tiny_net(widths=(4, 6, 5, 3)), "bce")
        resumed.load_state_dict(saved)
        resumed.step(x, y)
        assert resumed.quadratic.count == rows
