"""bench.kfac_step_cost's probes run against the optimizer as it is (the fractions probe had
gone stale once already: it called the quadratic model with a signature it no longer had)."""

from __future__ import annotations

import pytest

from bench.kfac_step_cost import FRACTIONS, fraction_quality, measure, repeated, work_per_step
from kfac.model_rows import MIN_MODEL_ROWS


def test_the_fractions_probe_solves_the_model_on_every_share(capsys) -> None:
    fraction_quality(probe_steps=(2,), batch=16)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| 2 |"))
    assert row.count("%") == len(FRACTIONS) - 1  # every share but the whole batch, one cell each


@pytest.mark.parametrize("task", ["autoencoder_sparse", "mlp_digits"])
def test_the_timing_counts_the_rows_each_variant_reads(task: str) -> None:
    """The rounds run every method on the digits (the autoencoder's first rows, the
    classifier's stratified ones); the defaults' model reads at most the quarter, the variant
    with fixed rows all of it, and the profile has the parts."""
    methods = ["sgd_momentum", "kfac", "kfac_fixed_rows"]
    medians, parts, rows = measure(256, 1, 2, 3, True, methods, task)
    assert set(medians) == set(methods) and all(t > 0 for t in medians.values())
    assert rows["kfac_fixed_rows"] == 64
    assert MIN_MODEL_ROWS <= rows["kfac"] <= 64
    assert set(parts["kfac"]) >= {"_forward_backward", "_precondition", "_output_directions"}


def test_repetitions_give_each_ratio_its_median_and_range() -> None:
    """Three whole measurements: SGD-m is its own unit in each, every other method's median
    ratio lies within the range of its three, and the profile's parts and the rows survive."""
    methods = ["sgd_momentum", "kfac"]
    ratio, spread, step, parts, rows = repeated(3, 64, 1, 2, 3, True, methods, "mlp_digits")
    assert ratio["sgd_momentum"] == 1.0 and spread["sgd_momentum"] == (1.0, 1.0)
    low, high = spread["kfac"]
    assert low <= ratio["kfac"] <= high and step["kfac"] > 0
    assert set(parts["kfac"]) >= {"_forward_backward", "_precondition"}
    assert 0 < rows["kfac"] <= 64 // 4  # at most the quarter of the batch


def test_the_work_count_is_the_sgd_step_s_products_exactly() -> None:
    """SGD-m's step on the digits MLP (784-256-128-10) is its forward products, the weights'
    gradients and the inputs' gradients of the layers after the first, B·(2·Σ d_in·d_out +
    256·128 + 128·10) multiply-adds; K-FAC's step does that and more."""
    work = work_per_step(256, 2, 3, ["sgd_momentum", "kfac_fixed", "kfac"], "mlp_digits")
    layers = 784 * 256 + 256 * 128 + 128 * 10
    assert work["sgd_momentum"] == 256 * (2 * layers + 256 * 128 + 128 * 10)
    assert work["sgd_momentum"] < work["kfac_fixed"] < work["kfac"]
