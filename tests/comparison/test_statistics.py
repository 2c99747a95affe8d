"""The comparison's definitions on fixed series, against values worked out by hand: mean, sd,
Student-t CI, first crossing by linear interpolation, never-reached counting, NaN, diverged and
unfinished runs, ties between configurations, labels and colours."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend.comparison import (
    Crossing,
    RunOutcome,
    compare,
    comparison,
    default_target,
    first_crossing,
    group_runs,
    higher_is_better,
    statistic,
    t_quantile,
)
from backend.comparison_groups import BASE_COLOURS, shade_colour
from backend.comparison_sources import SeriesSource


@dataclass
class FakeRun:
    id: str
    optimizer: dict[str, Any]
    seed: int = 0
    status: str = "succeeded"
    config: dict[str, Any] = field(default_factory=dict)
    experiment_id: str = "e"
    steps: int = 100

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "seed": self.seed,
            "config": self.config,
            "steps": self.steps,
        }


# Student's t 97.5% quantiles from the standard tables.
@pytest.mark.parametrize(
    ("df", "quantile"),
    [
        (1, 12.7062047),
        (2, 4.3026527),
        (3, 3.1824463),
        (4, 2.7764451),
        (10, 2.2281389),
        (30, 2.0422725),
    ],
)
def test_t_quantiles(df: int, quantile: float) -> None:
    assert math.isclose(t_quantile(0.975, df), quantile, rel_tol=1e-7)


def test_statistic_of_four_values() -> None:
    stat = statistic([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; sd² = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3; ci95 = t(0.975, 3)·sd/2
    assert stat["mean"] == 2.5 and stat["n"] == 4
    assert math.isclose(stat["sd"], math.sqrt(5 / 3))
    assert math.isclose(stat["ci95"], 3.1824463 * math.sqrt(5 / 3) / 2, rel_tol=1e-7)


def test_statistic_of_one_none_and_nan() -> None:
    assert statistic([5.0]) == {"mean": 5.0, "sd": None, "ci95": None, "n": 1}
    assert statistic([]) == {"mean": None, "sd": None, "ci95": None, "n": 0}
    assert statistic([1.0, math.nan, None, 3.0, math.inf]) == statistic([1.0, 3.0])


STEPS, TIMES, EXAMPLES = [0, 10, 20, 30], [0.0, 1.0, 3.0, 4.0], [0.0, 100.0, 200.0, 300.0]


@pytest.mark.parametrize(
    ("values", "target", "step", "seconds", "examples"),
    [
        ([9.0, 7.0, 4.0, 3.0], 5.0, 10 + 20 / 3, 1 + 4 / 3, 100 + 200 / 3),  # 2/3 of the way
        ([9.0, 7.0, 4.0, 3.0], 7.0, 10, 1.0, 100.0),  # exactly at a recorded point
        ([9.0, 7.0, 4.0, 3.0], 10.0, 0, 0.0, 0.0),  # the first point already meets it
        ([9.0, 4.0, 8.0, 3.0], 5.0, 8, 0.8, 80.0),  # the first crossing, not a later one
    ],
)
def test_first_crossing_interpolates_linearly(values, target, step, seconds, examples) -> None:
    crossing = first_crossing(STEPS, TIMES, values, target, False, EXAMPLES)
    assert math.isclose(crossing.step, step) and math.isclose(crossing.seconds, seconds)
    assert math.isclose(crossing.examples, examples)


def test_never_crossing_and_higher_is_better() -> None:
    assert first_crossing(STEPS, TIMES, [9.0, 7.0, 4.0, 3.0], 2.0, False) is None
    accuracy = first_crossing(STEPS, TIMES, [0.1, 0.5, 0.9, 0.95], 0.7, True)
    assert math.isclose(accuracy.step, 15) and accuracy.examples is None
    assert higher_is_better("test_accuracy") and not higher_is_better("test_loss")


def test_groups_labels_and_colours() -> None:
    runs = [
        FakeRun("a0", {"name": "kfac"}, 0),
        FakeRun("a1", {"name": "kfac"}, 1),
        FakeRun("b0", {"name": "sgd", "lr": 0.1}, 0, config={"lr": 0.1}),
        FakeRun("c0", {"name": "sgd", "lr": 0.3}, 0, config={"lr": 0.3}),
        FakeRun("d0", {"name": "adam", "lr": 0.001}),  # no sweep: labelled by what differs
        FakeRun("e0", {"name": "adam", "lr": 0.01}),
        FakeRun("f0", {"name": "mystery"}),
    ]
    groups = group_runs(runs)
    assert [[r.id for r in g.runs] for g in groups] == [
        ["a0", "a1"],
        ["b0"],
        ["c0"],
        ["d0"],
        ["e0"],
        ["f0"],
    ]
    assert [g.label for g in groups] == [
        "kfac", "sgd lr=0.1", "sgd lr=0.3", "adam lr=0.001", "adam lr=0.01", "mystery",
    ]  # fmt: skip
    colours = [g.colour for g in groups]
    assert colours[0] == BASE_COLOURS["kfac"]
    # Two sgd settings: 40% towards black, then 50% towards white, of sgd's hue.
    assert colours[1:3] == [
        shade_colour(BASE_COLOURS["sgd"], -0.4),
        shade_colour(BASE_COLOURS["sgd"], 0.5),
    ]
    assert shade_colour("#808080", 0.5) == "#C0C0C0" and shade_colour("#808080", -0.5) == "#404040"
    assert len(set(colours)) == len(colours)


def test_identical_labels_are_numbered_and_experiments_named() -> None:
    # Same optimizer, other step counts: two groups that the label alone would not tell apart.
    runs = [FakeRun("a", {"name": "sgd"}), FakeRun("b", {"name": "sgd"}, steps=50)]
    runs.append(FakeRun("c", {"name": "sgd"}, seed=1, status="running"))  # a's group
    assert [g.label for g in group_runs(runs)] == ["sgd #1", "sgd #2"]
    assert [len(g.runs) for g in group_runs(runs)] == [2, 1]
    # The same spec in two experiments: two groups, named by their experiment.
    runs = [FakeRun("a", {"name": "sgd"}), FakeRun("b", {"name": "sgd"}, experiment_id="f")]
    groups = group_runs(runs, experiment_names={"e": "first", "f": "second"})
    assert [g.label for g in groups] == ["first: sgd", "second: sgd"]


def outcome(
    final: float | None, best: float | None = None, step: float | None = None
) -> RunOutcome:
    crossing = None if step is None else Crossing(step, step / 10, step * 100)
    return RunOutcome(final, final if best is None else best, crossing, 0.01)


def test_diverged_unfinished_and_never_reached() -> None:
    runs = [
        FakeRun("a", {"name": "sgd"}, 0),
        FakeRun("b", {"name": "sgd"}, 1, status="diverged"),
        FakeRun("c", {"name": "sgd"}, 2, status="running"),
        FakeRun("d", {"name": "sgd"}, 3),
    ]
    outcomes = {"a": outcome(2.0, step=40), "b": outcome(1.0, step=10), "c": outcome(4.0)}
    (row,) = compare(group_runs(runs), outcomes, "train_loss", "final", 3.0)["groups"]
    assert row["seeds"] == {"count": 4, "finished": 3}
    # b diverged (left out although it had crossed), d recorded nothing: 2 excluded.
    assert row["final"]["mean"] == 3.0 and row["final"]["n"] == 2 and row["final"]["excluded"] == 2
    steps = row["steps_to_target"]
    assert (steps["mean"], steps["n"], steps["never"], steps["running"]) == (40, 1, 3, 1)
    assert row["step_time_ms"] == 10.0


def test_winner_ties_go_to_fewer_steps_then_the_first() -> None:
    runs = [
        FakeRun(i, {"name": "sgd"}, config={"lr": k}) for i, k in (("a", 1), ("b", 2), ("c", 3))
    ]
    runs.append(FakeRun("d", {"name": "adam"}))
    groups = group_runs(runs)
    tied = {"a": outcome(1.0, step=50), "b": outcome(1.0, step=30), "c": outcome(1.0, step=30)}
    rows = compare(groups, tied, "train_loss", "final", 2.0)["groups"]
    assert [r["best_of_optimizer"] for r in rows] == [False, True, False, False]  # d: no value
    better = {**tied, "c": outcome(0.5)}
    rows = compare(groups, better, "train_loss", "final", 2.0)["groups"]
    assert [r["best_of_optimizer"] for r in rows[:3]] == [False, False, True]
    by_best = {**tied, "a": outcome(3.0, best=0.1)}  # worst final, best minimum
    rows = compare(groups, by_best, "train_loss", "best", 2.0)["groups"]
    assert [r["best_of_optimizer"] for r in rows[:3]] == [True, False, False]


def test_default_target_is_the_best_baseline_final_mean() -> None:
    runs = [
        FakeRun("k", {"name": "kfac"}),
        FakeRun("s1", {"name": "sgd"}, config={"lr": 1}),
        FakeRun("s2", {"name": "sgd"}, 1, config={"lr": 1}),
        FakeRun("a", {"name": "adam"}),
    ]
    groups = group_runs(runs)
    outcomes = {"k": outcome(0.5), "s1": outcome(2.0), "s2": outcome(3.0), "a": outcome(2.6)}
    assert default_target(groups, outcomes, "train_loss") == 2.5  # K-FAC's 0.5 is no baseline
    assert default_target(groups, outcomes, "test_accuracy") == 2.6
    assert default_target(groups[:1], outcomes, "train_loss") is None


def test_the_flow_over_series() -> None:
    runs = [FakeRun("k", {"name": "kfac"}), FakeRun("s", {"name": "sgd"})]
    series = {
        "k": {
            "train_loss": ([0, 10, 20], [0.0, 1.0, 2.0], [9.0, 5.0, 1.0]),
            "examples_seen": ([0, 10, 20], [0.0, 1.0, 2.0], [0.0, 320.0, 640.0]),
            "step_time": ([1, 2, 3], [0.0, 0.0, 0.0], [0.3, 0.1, 0.2]),
        },
        "s": {"train_loss": ([0, 10, 20], [0.0, 2.0, 4.0], [9.0, 8.0, 4.0])},
    }
    answer = comparison(SeriesSource(series), group_runs(runs), "train_loss")
    assert answer["target"] == 4.0  # sgd's final
    kfac = answer["groups"][0]
    # 4 lies a quarter of the way from (10, 5) to (20, 1).
    assert math.isclose(kfac["steps_to_target"]["mean"], 12.5)
    assert math.isclose(kfac["seconds_to_target"]["mean"], 1.25)
    assert math.isclose(kfac["examples_to_target"]["mean"], 400.0)
    assert math.isclose(kfac["step_time_ms"], 200.0)
    assert answer["groups"][1]["steps_to_target"]["mean"] == 20
