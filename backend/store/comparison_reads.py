"""Reads for the comparison of runs (`backend.comparison`): a metric's last and extreme values,
the points around the first crossing of a target, and samples of a series for its median.

All of them avoid reading whole series (an experiment may hold 100 runs × 10,000 points):
- the last, lowest and highest values are those of the top rollup level, one row per series
  (its single bucket spans more steps than a run may take);
- the first crossing is found in the finest rollup level (the first 16-step bucket whose
  lowest, or highest, point meets the target), then read as the raw points of that bucket and
  the last point before it (the previous bucket's last point), which is all that
  interpolating the first crossing needs;
- a median reads at most `max_samples` evenly spread values: the raw points of a short series,
  else the first point of each bucket of the finest level with at most that many buckets.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import and_, func, or_, select, union_all
from sqlalchemy.orm import Session

from backend.store.models import ROLLUP_LEVELS, MetricPoint, MetricRollup, MetricSeries
from backend.store.rollups import bucket_width, choose_level

# (steps, wall times, values) of some points of one series, in step order.
Points = tuple[list[int], list[float], list[float]]
_CHUNK = 100  # series per statement (SQLite allows 500 terms in a compound select)


def _series(session: Session, run_ids: Sequence[str], name: str) -> list[MetricSeries]:
    return list(
        session.scalars(
            select(MetricSeries).where(
                MetricSeries.run_id.in_(run_ids),
                MetricSeries.name == name,
                MetricSeries.n_points > 0,
            )
        )
    )


def metric_extremes(
    session: Session, run_ids: Sequence[str], name: str
) -> dict[str, tuple[float, float, float]]:
    """`{run_id: (last, lowest, highest)}` of metric `name`, for the runs that recorded it."""
    r, s = MetricRollup.__table__.c, MetricSeries.__table__.c
    rows = session.execute(
        select(s.run_id, r.bucket, r.last_value, r.low_value, r.high_value)
        .join_from(MetricRollup.__table__, MetricSeries.__table__, s.id == r.series_id)
        .where(s.run_id.in_(run_ids), s.name == name, r.level == ROLLUP_LEVELS - 1)
        .order_by(s.run_id, r.bucket)
    ).all()
    out: dict[str, tuple[float, float, float]] = {}
    for run_id, _, last, low, high in rows:  # buckets in order: the last one's last point wins
        _, seen_low, seen_high = out.get(run_id, (last, low, high))
        out[run_id] = (last, min(low, seen_low), max(high, seen_high))
    return out


def crossing_points(
    session: Session, run_ids: Sequence[str], name: str, target: float, higher: bool
) -> dict[str, Points]:
    """For each run whose metric reaches `target` (<=, or >= if `higher`): the last point
    before the first 16-step bucket that reaches it, then that bucket's points."""
    series = {s.id: s.run_id for s in _series(session, run_ids, name)}
    if not series:
        return {}
    r = MetricRollup.__table__.c
    reaches = r.high_value >= target if higher else r.low_value <= target
    first = dict(
        session.execute(
            select(r.series_id, func.min(r.bucket))
            .where(r.series_id.in_(list(series)), r.level == 0, reaches)
            .group_by(r.series_id)
        ).all()
    )
    out: dict[str, Points] = {}
    items = list(first.items())
    for start in range(0, len(items), _CHUNK):
        for series_id, points in _bucket_and_before(session, items[start : start + _CHUNK]).items():
            out[series[series_id]] = points
    return out


def _bucket_and_before(session: Session, buckets: list[tuple[int, int]]) -> dict[int, Points]:
    p, r = MetricPoint.__table__.c, MetricRollup.__table__.c
    width = bucket_width(0)
    branches = []
    for series_id, bucket in buckets:
        branches.append(
            select(p.series_id, p.step, p.wall_time, p.value).where(
                p.series_id == series_id, p.step.between(bucket * width, (bucket + 1) * width - 1)
            )
        )
        before = (
            select(r.series_id, r.last_step, r.last_time, r.last_value)
            .where(r.series_id == series_id, r.level == 0, r.bucket < bucket)
            .order_by(r.bucket.desc())
            .limit(1)
        )
        branches.append(select(before.subquery()))
    out: dict[int, Points] = {series_id: ([], [], []) for series_id, _ in buckets}
    for series_id, step, wall_time, value in session.execute(union_all(*branches)).all():
        steps, times, values = out[series_id]
        steps.append(step), times.append(wall_time), values.append(value)
    for series_id, (steps, times, values) in out.items():
        order = np.argsort(steps, kind="stable")
        out[series_id] = tuple([column[i] for i in order] for column in (steps, times, values))
    return out


def values_at(
    session: Session, steps: dict[str, Sequence[int]], name: str
) -> dict[str, dict[int, float]]:
    """`{run_id: {step: value}}` of metric `name` at the given steps of each run."""
    if not steps:
        return {}
    p, s = MetricPoint.__table__.c, MetricSeries.__table__.c
    wanted = [and_(s.run_id == run_id, p.step.in_(list(at))) for run_id, at in steps.items() if at]
    if not wanted:
        return {}
    rows = session.execute(
        select(s.run_id, p.step, p.value)
        .join_from(MetricPoint.__table__, MetricSeries.__table__, s.id == p.series_id)
        .where(s.name == name, or_(*wanted))
    ).all()
    out: dict[str, dict[int, float]] = {}
    for run_id, step, value in rows:
        out.setdefault(run_id, {})[step] = value
    return out


def value_samples(
    session: Session, run_ids: Sequence[str], name: str, max_samples: int = 512
) -> dict[str, np.ndarray]:
    """Up to `max_samples` values of each run's metric `name`, spread evenly over its steps."""
    p, r = MetricPoint.__table__.c, MetricRollup.__table__.c
    branches = []
    found = _series(session, run_ids, name)
    for series in found:
        if series.n_points <= max_samples:
            branches.append(select(p.series_id, p.value).where(p.series_id == series.id))
        else:
            level = choose_level(series.step_min, series.step_max, max_samples)
            branches.append(
                select(r.series_id, r.first_value).where(r.series_id == series.id, r.level == level)
            )
    out: dict[str, list[float]] = {}
    run_of = {series.id: series.run_id for series in found}
    for start in range(0, len(branches), _CHUNK):
        for series_id, value in session.execute(union_all(*branches[start : start + _CHUNK])):
            out.setdefault(run_of[series_id], []).append(value)
    return {run_id: np.asarray(values) for run_id, values in out.items()}
