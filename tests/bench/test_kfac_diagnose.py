"""bench.kfac_diagnose's probes run against the optimizer as it is (its `--shares` probe had
gone stale: it called the quadratic model with a signature it no longer had), and its plateau
column counts what it says."""

from __future__ import annotations

import math
from argparse import Namespace

import pytest

from bench.kfac_diagnose import left_plateau_at, mean_image_loss, run, summarise


def options(**overrides) -> Namespace:
    defaults = dict(
        task="mlp_digits",
        scale=1.0,
        steps=3,
        every=1,
        min_damping=1e-4,
        sgd_lr=0.3,
        batch=32,
        shares=True,
        layers=True,
    )
    return Namespace(**{**defaults, **overrides})


def test_both_probes_record_every_adaptive_step_of_a_run():
    result = run(("defaults", {}, 0, options()))
    probed = result["rows"][1:]  # the first step has no δ₀, the model still runs on Δ
    for row in result["rows"]:
        assert 0 < row["top_tenth"] <= 1
        assert math.isfinite(row["alpha_share_over_whole"])
    for row in probed:
        ratios = [value for key, value in row.items() if key.startswith("layer ")]
        assert len(ratios) == 3 and all(r > 0 for r in ratios), row  # the MLP's three layers


def test_the_layer_probe_keeps_to_the_evaluated_steps():
    result = run(("defaults", {}, 0, options(steps=4, every=2, shares=False)))
    layered = [row["step"] for row in result["rows"] if "layer 0" in row]
    assert layered == [2, 4]
    assert [row["step"] for row in result["rows"] if not math.isnan(row["nll"])] == [2, 4]


def test_the_plateau_column_counts_the_seeds_that_left(capsys):
    plateau = mean_image_loss("autoencoder_default")
    assert plateau == pytest.approx(206.6, abs=0.5)  # the race's mean-image plateau
    assert mean_image_loss("mlp_digits") is None

    def rows(*losses):
        return [{"step": 25 * (i + 1), "nll": loss} for i, loss in enumerate(losses)]

    stays, leaves = rows(207.0, 199.0, 197.0), rows(207.0, 190.0, 150.0)
    assert left_plateau_at(stays, plateau) is None
    assert left_plateau_at(leaves, plateau) == 50
    summarise(
        [{"name": "d", "seed": s, "rows": r} for s, r in enumerate([stays, leaves])], [75], plateau
    )
    assert "| 1 of 2: —, 50 |" in capsys.readouterr().out
