"""The store's reads for comparisons give what the whole series gives: last and extreme values,
the first crossing of a target (found through the rollups, read from a few raw points), the
examples seen at given steps and the median step time."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import numpy as np
import pytest
from sqlalchemy import event

from backend.comparison import first_crossing
from backend.comparison_sources import SeriesSource, StoreSource
from backend.store.db import session_scope
from backend.store.results import write_metrics
from backend.store.rollups import bucket_width, choose_level

MakeExperiment = Callable[..., tuple[str, list[str]]]


def noisy_descent(n: int, every: int, seed: int) -> tuple[list[int], list[float], list[float]]:
    rng = np.random.default_rng(seed)
    steps = list(range(0, n * every, every))
    values = (10 * np.exp(-np.asarray(steps) / 4000) + rng.normal(0, 0.3, n)).tolist()
    return steps, [0.01 * s for s in steps], values


@pytest.mark.parametrize("every", [1, 3, 40])
def test_store_reads_equal_the_whole_series(
    db_url: str, make_experiment: MakeExperiment, every: int
) -> None:
    _, run_ids = make_experiment(2)
    series = {}
    for seed, run_id in enumerate(run_ids):
        steps, times, values = noisy_descent(3000, every, seed)
        examples = [32.0 * s for s in steps]
        step_time = ([1, 2, 3, 4], [0.0] * 4, [0.2, 0.1, 0.4, 0.3])
        if seed:  # a long one: the median of the first point of each rollup bucket
            step_time = (steps, times, [0.01 * (s % 7 + s % 5) for s in steps])
        series[run_id] = {
            "train_loss": (steps, times, values),
            "examples_seen": (steps, times, examples),
            "step_time": step_time,
        }
        points = [("train_loss", *p) for p in zip(steps, times, values, strict=True)]
        points += [("examples_seen", *p) for p in zip(steps, times, examples, strict=True)]
        points += [("step_time", *p) for p in zip(*step_time, strict=True)]
        with session_scope(db_url) as session:
            write_metrics(session, run_id, points)
    memory = SeriesSource(series)
    with session_scope(db_url) as session:
        store = StoreSource(session)
        assert store.extremes(run_ids, "train_loss") == memory.extremes(run_ids, "train_loss")
        medians = store.step_times(run_ids)
        assert medians[run_ids[0]] == pytest.approx(0.25)
        steps, _, values = series[run_ids[1]]["step_time"]
        width = bucket_width(choose_level(0, steps[-1], 128))
        bucket_firsts = [v for s, v in zip(steps, values, strict=True) if s % width < every]
        assert medians[run_ids[1]] == pytest.approx(statistics.median(bucket_firsts))
        for target, higher in [
            (9.0, False),
            (4.0, False),
            (1.5, False),
            (-5.0, False),
            (3.0, True),
        ]:
            found = store.around_crossing(run_ids, "train_loss", target, higher)
            wanted = memory.around_crossing(run_ids, "train_loss", target, higher)
            for run_id in run_ids:
                expected = first_crossing(*wanted[run_id], target, higher)
                if expected is None:
                    assert run_id not in found
                    continue
                steps, times, values = found[run_id]
                assert len(steps) <= 17  # one bucket and the point before it
                seen = store.examples_at({run_id: steps})[run_id]
                crossing = first_crossing(
                    steps, times, values, target, higher, [seen[s] for s in steps]
                )
                assert math.isclose(crossing.step, expected.step)
                assert math.isclose(crossing.seconds, expected.seconds, abs_tol=1e-9)
                assert math.isclose(crossing.examples, 32.0 * expected.step)


def test_a_cold_comparison_is_a_few_statements_whatever_the_number_of_runs(
    db_url: str, make_experiment: MakeExperiment
) -> None:
    """Each statement is a round trip that, on a busy machine, waits for a CPU: the reads look
    the series up once for every metric (not once per metric), so a comparison
    with a target costs the same few statements for 2 runs or 8."""

    def statements(n_runs: int) -> int:
        _, run_ids = make_experiment(n_runs)
        for seed, run_id in enumerate(run_ids):
            steps, times, values = noisy_descent(1500, 1, seed)
            points = [("train_loss", *p) for p in zip(steps, times, values, strict=True)]
            points += [("examples_seen", s, t, 32.0 * s) for s, t in zip(steps, times, strict=True)]
            points += [
                ("step_time", s, t, 0.01 * (s % 7)) for s, t in zip(steps, times, strict=True)
            ]
            with session_scope(db_url) as session:
                write_metrics(session, run_id, points)
        with session_scope(db_url) as session:
            executed: list[str] = []
            engine = session.get_bind()
            listener = lambda *args: executed.append(args[2])  # noqa: E731
            event.listen(engine, "before_cursor_execute", listener)
            try:
                store = StoreSource(session)
                store.step_times(run_ids)
                store.extremes(run_ids, "train_loss")
                found = store.around_crossing(run_ids, "train_loss", 8.0, False)
                store.examples_at({run: steps for run, (steps, _, _) in found.items()})
            finally:
                event.remove(engine, "before_cursor_execute", listener)
        assert len(found) == n_runs  # every run crossed: every read had work to do
        return len(executed)

    few, many = statements(2), statements(8)
    assert few == many <= 7, (few, many)
