"""bench.kfac_vs_sgd's bookkeeping: which learning rates a race ran, when the best one says the
grid was too narrow, and that baselines are never reused from a race run under other settings."""

from __future__ import annotations

import json

import pytest

from bench.kfac_vs_sgd import baseline_grid, main, row_key, summarise


def row(*curve: float) -> dict:
    return {"mean_curve": [(10 * k, loss) for k, loss in enumerate(curve)]}


def test_the_grid_is_read_back_off_a_tables_rows() -> None:
    rows = [("sgd_momentum", 0.001), ("sgd_momentum", 0.1), ("adam", 0.0003), ("kfac", None)]
    table = {row_key(method, lr): {} for method, lr in rows}
    assert baseline_grid(table) == {"sgd_momentum": [0.001, 0.1], "adam": [0.0003]}


@pytest.mark.parametrize(("best", "at_edge"), [(0.01, False), (0.03, True), (0.001, True)])
def test_a_best_learning_rate_on_the_grids_edge_is_flagged(best: float, at_edge: bool) -> None:
    grid = {"adam": [0.001, 0.01, 0.03], "sgd_momentum": [0.1, 0.3, 1.0]}
    table = {row_key("adam", lr): row(5.0, 4.0 if lr == best else 4.5) for lr in grid["adam"]}
    for lr in grid["sgd_momentum"]:
        table[row_key("sgd_momentum", lr)] = row(5.0, 4.2 if lr == 0.3 else 4.8)
    kfac = [row(5.0, 3.0)["mean_curve"]]
    ratios = {"adam": 1.0, "sgd_momentum": 1.0, "kfac": 2.0}
    summary = summarise(table, kfac, {**grid, "kfac": [None]}, ratios)
    assert summary["adam"]["lr"] == best
    assert summary["adam"]["lr_at_grid_edge"] is at_edge
    assert summary["sgd_momentum"]["lr_at_grid_edge"] is False
    assert summary["adam"]["time_ratio"] == pytest.approx(2.0)  # step 10 at 2× against step 10


QUARTER = {"scale": 0.25, "budget": 600, "seeds": 3}


@pytest.mark.parametrize(
    ("saved", "settings", "message"),
    [
        (QUARTER, ["--scale", "0.5", "--budget", "600"], "ran with scale 0.25"),
        (QUARTER, ["--scale", "0.25"], "ran with budget 600"),
        ({"scale": 0.25, "budget": 600}, ["--scale", "0.25", "--budget", "600"], "which seeds"),
    ],
)
def test_baselines_from_a_race_under_other_or_unknown_settings_are_refused(
    tmp_path, capsys, monkeypatch, saved: dict, settings: list[str], message: str
) -> None:
    def race_step_times(*_):  # were the refusal gone, the race would start (and write docs/)
        raise AssertionError("the race started with baselines it should have refused")

    monkeypatch.setattr("bench.kfac_vs_sgd.race_step_times", race_step_times)
    earlier = tmp_path / "race.json"
    earlier.write_text(json.dumps({**saved, "race": {}}))
    with pytest.raises(SystemExit):
        main(["--no-step-time", *settings, "--reuse-baselines", str(earlier)])
    assert message in capsys.readouterr().err
