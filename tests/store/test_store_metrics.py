"""Metric points: written once per (metric, step), read back downsampled without losing peaks."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from backend.store.db import session_scope
from backend.store.models import ROLLUP_LEVELS, MetricRollup, MetricSeries
from backend.store.queries import events_after, iter_points, read_metric, read_metrics
from backend.store.results import write_metrics
from backend.store.rollup_reads import read_buckets
from backend.store.rollups import KINDS, bucket_width

MakeExperiment = Callable[..., tuple[str, list[str]]]


def noisy_curve(n: int, seed: int = 0) -> list[tuple[str, int, float, float]]:
    """A decreasing loss with noise and a few spikes, one point per step."""
    rng = random.Random(seed)
    points = []
    for step in range(n):
        value = 1.0 / (1 + step / 100) + rng.gauss(0, 0.01)
        if rng.random() < 0.001:
            value += rng.uniform(1, 5)
        points.append(("train_loss", step, 0.01 * step, value))
    return points


def test_writing_a_batch_twice_stores_it_once(db_url: str, make_experiment: MakeExperiment):
    experiment_id, (run_id,) = make_experiment()
    batch = [("train_loss", step, step * 0.1, 1.0 / (step + 1)) for step in range(50)]
    with session_scope(db_url) as session:
        assert write_metrics(session, run_id, batch) == 50
    with session_scope(db_url) as session:
        assert write_metrics(session, run_id, batch[::-1]) == 0  # redelivered, reordered
        assert write_metrics(session, run_id, batch[40:] + [("train_loss", 50, 5.0, 0.5)]) == 1
        curve = read_metric(session, run_id, "train_loss")
        events = events_after(session, experiment_id)
    assert curve["x"] == list(range(51))
    assert curve["y"][:50] == [1.0 / (step + 1) for step in range(50)]
    metric_events = [e for e in events if e.kind == "metrics"]
    assert len(metric_events) == 2  # nothing new, no event
    assert metric_events[1].payload["series"]["train_loss"]["step"] == [50]


def test_a_partly_stored_batch_adds_only_its_new_points(
    db_url: str, make_experiment: MakeExperiment
):
    """Several series, some points stored before, repeats inside the batch (the first one
    counts), given as a generator: only the new points reach the series and the event."""
    experiment_id, (run_id,) = make_experiment()
    with session_scope(db_url) as session:
        write_metrics(session, run_id, [("a", s, s, 1.0) for s in range(0, 10, 2)])
        batch = [(name, s, s, 2.0) for s in range(10) for name in "ab"]
        batch.insert(0, ("b", 9, 9.0, 3.0))  # a repeat of ("b", 9) before its other copy
        assert write_metrics(session, run_id, (point for point in batch)) == 15
        events = events_after(session, experiment_id)
        curves = read_metrics(session, [run_id], ["a", "b"])[run_id]
    new = events[-1].payload["series"]
    assert new["a"]["step"] == [1, 3, 5, 7, 9] and set(new["a"]["value"]) == {2.0}
    assert new["b"]["step"] == list(range(10)) and new["b"]["value"][-1] == 3.0
    assert curves["a"]["y"] == [1.0, 2.0] * 5
    assert curves["b"]["y"] == [2.0] * 9 + [3.0]


def test_points_come_back_in_step_order(db_url: str, make_experiment: MakeExperiment):
    _, (run_id,) = make_experiment()
    with session_scope(db_url) as session:
        write_metrics(session, run_id, [("loss", s, float(s), float(s)) for s in (5, 1, 3)])
        write_metrics(session, run_id, [("loss", s, float(s), float(s)) for s in (4, 0, 2)])
        assert read_metric(session, run_id, "loss")["x"] == [0, 1, 2, 3, 4, 5]
        assert [p[1] for p in iter_points(session, run_id)] == [0, 1, 2, 3, 4, 5]


def test_non_finite_values_are_skipped(db_url: str, make_experiment: MakeExperiment):
    _, (run_id,) = make_experiment()
    batch = [("loss", 0, 0.0, 1.0), ("loss", 1, 1.0, float("nan")), ("loss", 2, 2.0, float("inf"))]
    with session_scope(db_url) as session:
        assert write_metrics(session, run_id, batch) == 1
        assert read_metric(session, run_id, "loss") == {"x": [0], "y": [1.0]}


def test_downsampling_keeps_extremes_and_the_budget(db_url: str, make_experiment: MakeExperiment):
    _, (run_id,) = make_experiment()
    points = noisy_curve(20_000)
    with session_scope(db_url) as session:
        for start in range(0, len(points), 5_000):  # batches, as the worker sends them
            write_metrics(session, run_id, points[start : start + 5_000])
    values = [p[3] for p in points]
    with session_scope(db_url) as session:
        for max_points in (2000, 300, 10):
            curve = read_metric(session, run_id, "train_loss", max_points=max_points)
            assert len(curve["x"]) <= max_points
            assert len(curve["x"]) >= max_points // 8  # not needlessly coarse
            assert curve["x"] == sorted(set(curve["x"]))
            assert min(curve["y"]) == min(values) and max(curve["y"]) == max(values)
            assert curve["x"][0] == 0 and curve["x"][-1] == 19_999
            assert all(values[int(x)] == y for x, y in zip(curve["x"], curve["y"], strict=True))

        by_time = read_metric(session, run_id, "train_loss", x="time", max_points=300)
        assert max(by_time["y"]) == max(values)
        assert by_time["x"] == sorted(by_time["x"]) and by_time["x"][-1] == 0.01 * 19_999


def test_a_range_is_read_at_its_own_resolution(db_url: str, make_experiment: MakeExperiment):
    _, (run_id,) = make_experiment()
    points = noisy_curve(20_000, seed=1)
    with session_scope(db_url) as session:
        write_metrics(session, run_id, points)
        whole = read_metric(session, run_id, "train_loss", max_points=2000, x_range=(1000, 2999))
        assert whole == {"x": list(range(1000, 3000)), "y": [p[3] for p in points[1000:3000]]}

        zoomed = read_metric(session, run_id, "train_loss", max_points=500, x_range=(1000, 5999))
        assert 500 // 8 <= len(zoomed["x"]) <= 500
        assert zoomed["x"][0] >= 1000 - 64 and zoomed["x"][-1] < 6000 + 64  # edge buckets reach out
        inside = [p[3] for p in points[1000:6000]]
        assert min(zoomed["y"]) <= min(inside) and max(zoomed["y"]) >= max(inside)

        small = read_metric(session, run_id, "train_loss", max_points=2000, x_range=(100, 199))
        assert small == {"x": list(range(100, 200)), "y": [p[3] for p in points[100:200]]}

        by_time = read_metric(session, run_id, "train_loss", x="time", x_range=(10.0, 10.5))
        assert by_time["x"] == [0.01 * s for s in range(1000, 1051)]


def test_many_series_in_one_read(db_url: str, make_experiment: MakeExperiment):
    _, run_ids = make_experiment(n_runs=3)
    with session_scope(db_url) as session:
        for i, run_id in enumerate(run_ids):
            write_metrics(session, run_id, [(n, s, s, s * i) for s in range(3000) for n in "ab"])
        result = read_metrics(session, run_ids, ["a", "b", "missing"], max_points=100)
    assert set(result) == set(run_ids)
    for i, run_id in enumerate(run_ids):
        assert set(result[run_id]) == {"a", "b"}
        curve = result[run_id]["b"]
        assert len(curve["x"]) <= 100 and curve["y"][-1] == 2999 * i


def test_rollups_equal_a_summary_of_the_stored_points(db_url: str, make_experiment: MakeExperiment):
    """However the points arrive (any order, any batching, with repeats), every rollup row
    equals the summary computed from scratch over the stored points."""
    _, (run_id,) = make_experiment()
    rng = random.Random(2)
    steps = list(range(3000))
    rng.shuffle(steps)
    points = [("m", s, s * 0.5, float(rng.randint(0, 50))) for s in steps]  # many ties
    with session_scope(db_url) as session:
        for start in range(0, 3000, 700):
            write_metrics(session, run_id, points[start : start + 900])  # overlapping batches
        series_id = session.scalar(select(MetricSeries.id).where(MetricSeries.run_id == run_id))
        stored = session.scalars(select(MetricRollup).where(MetricRollup.series_id == series_id))
        stored = {(r.level, r.bucket): r for r in stored}
    expected = reference_rollups(sorted((s, t, v) for _, s, t, v in points))
    assert len(stored) == len(expected)
    for (level, bucket), summary in expected.items():
        row = stored[(level, bucket)]
        for kind, point in zip(KINDS, summary, strict=True):
            got = (getattr(row, f"{kind}_step"), getattr(row, f"{kind}_time"))
            assert got + (getattr(row, f"{kind}_value"),) == point


def reference_rollups(points: list[tuple[int, float, float]]) -> dict[tuple[int, int], tuple]:
    """The rollups by definition, the slow way: for every level and bucket, the (step, time,
    value) of its first, lowest, highest and last point, ties going to the earlier step."""
    expected = {}
    for level in range(ROLLUP_LEVELS):
        buckets: dict[int, list[tuple[int, float, float]]] = {}
        for point in points:
            buckets.setdefault(point[0] // bucket_width(level), []).append(point)
        for bucket, inside in buckets.items():
            low = min(inside, key=lambda p: (p[2], p[0]))
            high = min(inside, key=lambda p: (-p[2], p[0]))
            expected[(level, bucket)] = (inside[0], low, high, inside[-1])
    return expected


@pytest.mark.integration
def test_a_lost_connection_fails_as_sqlalchemy_reports_it(postgresql_url: str) -> None:
    """PostgreSQL's buckets are read on the driver's own cursor (for binary results); its
    errors still come out as SQLAlchemy's, which the API answers with a 503."""
    with session_scope(postgresql_url) as session:
        backend = session.scalar(select(func.pg_backend_pid()))
        with session_scope(postgresql_url) as other:
            other.execute(select(func.pg_terminate_backend(backend)))
        with pytest.raises(OperationalError):
            read_buckets(session, [(1, 0, 0, 10)], "step")
        session.rollback()  # and the session recovers, as after any lost connection
        assert session.scalar(select(func.pg_backend_pid())) != backend
