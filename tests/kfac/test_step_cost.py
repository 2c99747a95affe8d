"""The step's cost counted from the layers' shapes (kfac.step_cost) against the multiply-adds of
the matrix products a default step really runs, counted by torch's FlopCounterMode; and the
optimizer's rows chosen by that count past the ℓ2 phase."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import kfac.step_cost
from kfac import KFAC
from kfac.model_rows import economical_rows
from kfac.step_cost import in_model_rows, product_costs, step_costs
from tests.kfac import explicit

# Intervals short enough that every term weighs ≥ 4% of the step (ρ's forward pass alone ~12%),
# and statistics on half the batch.
SHORT_INTERVALS = {
    "stats_interval": 2,
    "damping_interval": 2,
    "inverse_interval": 4,
    "stats_fraction": 0.5,
}


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, bias=False),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(64, 5, bias=False),
        nn.Tanh(),
        nn.Linear(5, 3, bias=False),
    ).double()


def normalised_net() -> nn.Sequential:
    """Batch norm's parameters lie outside the K-FAC layers: J·v takes dual forward passes."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(12, 40, bias=False), nn.BatchNorm1d(40), nn.Tanh(),
        nn.Linear(40, 30, bias=False), nn.Tanh(), nn.Linear(30, 3, bias=False),
    ).double()  # fmt: skip


def counted_step(make_model, inputs, targets, share: float, intervals: dict, steps: int):
    """Multiply-adds per step of `steps` default steps past the ℓ2 phase, with `intervals`,
    the model on `share` of the batch; and the optimizer after them."""
    optimizer = KFAC(
        make_model(),
        "bce",
        weight_decay_steps=0,
        adapt_quadratic_rows=False,
        quadratic_fraction=share,
        **intervals,
    )
    optimizer.step(inputs, targets)
    with FlopCounterMode(display=False) as counter:
        for _ in range(steps):
            optimizer.step(inputs, targets)
    return counter.get_total_flops() / 2 / steps, optimizer


def measured_and_counted(make_model, inputs, targets, intervals: dict, steps: int):
    """(rest, row) as the counter sees them, from two runs with the model on a quarter and on
    the whole batch (their difference per row is a row's cost), and as `step_costs` counts
    them for the optimizer's layers and choices; and the optimizer. Cholesky and its solves
    are not matrix products to the counter: the caller leaves the inversions out of the count."""
    batch = inputs.shape[0]
    quarter, optimizer = counted_step(make_model, inputs, targets, 0.25, intervals, steps)
    whole, _ = counted_step(make_model, inputs, targets, 1.0, intervals, steps)
    rows = round(0.25 * batch)
    row = (whole - quarter) / (batch - rows)
    counted = step_costs(
        optimizer.blocks,
        optimizer.capture.rows_per_example,
        batch,
        optimizer._per_example_layers(batch),
        optimizer.param_groups[0],
        optimizer.quadratic.reads_training_pass,
    )
    return (quarter - rows * row, row), counted, optimizer


MLP_CASES = {"dense": ((30, 60, 40, 50, 20), 64), "per example": ((30, 60, 40, 50, 20), 8)}
"""Widths and batch: every layer's product dense; every layer's per example."""


def case(name: str):
    """(a model maker, inputs, targets) of a named case."""
    if name == "conv":
        gen = torch.Generator().manual_seed(1)
        inputs = torch.randn(8, 2, 6, 6, generator=gen, dtype=torch.float64)
        targets = torch.bernoulli(torch.full((8, 3), 0.5, dtype=torch.float64), generator=gen)
        return conv_net, inputs, targets
    if name == "dual passes":
        inputs, targets = explicit.batch("bce", n=32, d_in=12, d_out=3)
        return normalised_net, inputs, targets
    widths, batch = MLP_CASES[name]
    inputs, targets = explicit.batch("bce", n=batch, d_in=widths[0], d_out=widths[-1])
    return (lambda: explicit.tiny_net(bias=False, widths=widths)), inputs, targets


@pytest.mark.parametrize("name", ["dense", "per example", "conv", "dual passes"])
def test_the_count_is_the_multiply_adds_of_the_step_s_products(name, monkeypatch):
    """The rest of the step and a row, as counted and as run, within 0.5%: the layers have no
    biases, whose additions the counter does not see."""
    monkeypatch.setattr(kfac.step_cost, "INVERSION_COST", 0)
    make_model, inputs, targets = case(name)
    (rest, row), (rest_counted, row_counted), optimizer = measured_and_counted(
        make_model, inputs, targets, SHORT_INTERVALS, steps=4
    )
    per_example = optimizer._per_example_layers(inputs.shape[0])
    assert (name == "per example") == bool(per_example)  # both branches are covered
    assert optimizer.quadratic.reads_training_pass == (name != "dual passes")
    assert row == pytest.approx(row_counted, rel=0.005)
    assert rest == pytest.approx(rest_counted, rel=0.005)


def test_with_the_default_intervals_and_biases_the_count_errs_by_the_bias_additions_only(
    monkeypatch,
):
    """What users run: the default intervals (20 steps: inverses once, statistics twice, ρ four
    times) and layers with biases, one of them per example. The count takes a bias as a column
    of the products, so it may exceed the counter by the biases' additions (~1–2% on these
    narrow layers), never fall below it."""
    monkeypatch.setattr(kfac.step_cost, "INVERSION_COST", 0)
    widths, batch = (60, 120, 100, 40), 64
    inputs, targets = explicit.batch("bce", n=batch, d_in=widths[0], d_out=widths[-1])
    measured, counted, optimizer = measured_and_counted(
        lambda: explicit.tiny_net(widths=widths), inputs, targets, {}, steps=20
    )
    assert optimizer._per_example_layers(batch)
    for value, count in zip(measured, counted, strict=True):
        assert 0.97 * count <= value <= count


def test_past_the_l2_phase_the_rows_follow_the_count_with_per_example_layers():
    """The default optimizer at a batch where the wide layers precondition per example: the
    model's rows (of the whole batch) are economical_rows(s², R, B) with R counted for those
    layers' products (chosen here by their multiply-adds, not by the optimizer) and their
    factored J·Δ."""
    widths, batch = (30, 200, 150, 10), 64
    model = explicit.tiny_net(widths=widths)
    inputs, targets = explicit.batch("bce", n=batch, d_in=widths[0], d_out=widths[-1])
    optimizer = KFAC(model, "bce", weight_decay_steps=0, quadratic_fraction=1.0)
    optimizer.step(inputs, targets)
    per_example = set()
    for block in optimizer.blocks:
        by_rows, dense = product_costs(block, batch)
        if by_rows < dense:
            per_example.add(block.name)
    assert per_example and per_example != {b.name for b in optimizer.blocks}
    variance = 6.0
    group, recorded = optimizer.param_groups[0], optimizer.capture.rows_per_example
    cost = in_model_rows(step_costs(optimizer.blocks, recorded, batch, per_example, group, True))
    dense = in_model_rows(step_costs(optimizer.blocks, recorded, batch, set(), group, True))
    expected = economical_rows(variance, cost, batch)
    assert expected != economical_rows(variance, dense, batch)  # the products decide
    optimizer.counters["row_variance"] = variance
    optimizer.step(inputs, targets)
    assert len(torch.arange(batch)[optimizer.quadratic.rows]) == expected
