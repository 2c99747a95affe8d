"""Reads for the comparison of runs (`backend.comparison`): a metric's last and extreme values,
the points around the first crossing of a target, and samples of a series for its median.

All of them avoid reading whole series (an experiment may hold 100 runs × 10,000 points):
- the last, lowest and highest values are those of the top rollup level, one row per series
  (its single bucket spans more steps than a run may take);
- the first crossing is found in the rollups (the first 256-step bucket whose lowest, or
  highest, point meets the target, then the first 16-step bucket inside it), then read as the
  raw points of that bucket and the last point before it, which is all that interpolating the
  first crossing needs;
- a median is taken over at most `max_samples` evenly spread values: the raw points of a short
  series, else the first point of each bucket of the finest level with at most that many
  buckets (in the database, on PostgreSQL).

Each read takes the series it reads, one per run, which `series_of_runs` finds for every
metric at once. Lists of ranges or steps go in as a table joined to the data: one short
statement whatever their number. A cold comparison is about seven statements: on a busy machine
each round trip to the database waits for a CPU, so their number is what its time follows.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sqlalchemy import FromClause, Integer, and_, bindparam, column, func, select, values
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from backend.store.models import ROLLUP_LEVELS, MetricPoint, MetricRollup, MetricSeries
from backend.store.rollups import bucket_width, choose_level

# (steps, wall times, values) of some points of one series, in step order.
Points = tuple[list[int], list[float], list[float]]
_COARSE = 4  # the rollup level searched first for a crossing: buckets of 256 steps


def series_of_runs(session: Session, run_ids: Sequence[str]) -> list[MetricSeries]:
    """Every non-empty series of the runs, whatever its metric: one statement for what the
    reads below need (the metric's, `step_time`'s, `examples_seen`'s)."""
    return list(
        session.scalars(
            select(MetricSeries).where(MetricSeries.run_id.in_(run_ids), MetricSeries.n_points > 0)
        )
    )


def metric_extremes(
    session: Session, series: Sequence[MetricSeries]
) -> dict[str, tuple[float, float, float]]:
    """`{run_id: (last, lowest, highest)}` of each of `series` (one per run)."""
    r = MetricRollup.__table__.c
    run_of = {s.id: s.run_id for s in series}
    if not run_of:
        return {}
    rows = session.execute(
        select(r.series_id, r.bucket, r.last_value, r.low_value, r.high_value)
        .where(r.series_id.in_(list(run_of)), r.level == ROLLUP_LEVELS - 1)
        .order_by(r.series_id, r.bucket)
    ).all()
    out: dict[str, tuple[float, float, float]] = {}
    for series_id, _, last, low, high in rows:  # in bucket order: the last one's last point wins
        _, seen_low, seen_high = out.get(run_of[series_id], (last, low, high))
        out[run_of[series_id]] = (last, min(low, seen_low), max(high, seen_high))
    return out


def crossing_points(
    session: Session, series: Sequence[MetricSeries], target: float, higher: bool
) -> dict[str, Points]:
    """For each of `series` (one per run) that reaches `target` (<=, or >= if `higher`): the
    points of the first 16-step bucket that reaches it, after the last point before that
    bucket."""
    run_of = {s.id: s.run_id for s in series}
    if not run_of:
        return {}
    r = MetricRollup.__table__.c
    reaches = r.high_value >= target if higher else r.low_value <= target
    # The first coarse bucket that reaches the target, then the first fine bucket inside it:
    # a few dozen rollup rows per series instead of every fine one. (Two statements: as one,
    # with the coarse search a subquery, PostgreSQL estimates the fine one badly and scans the
    # whole rollup table, 6x slower.)
    coarse = session.execute(
        select(r.series_id, func.min(r.bucket))
        .where(r.series_id.in_(list(run_of)), r.level == _COARSE, reaches)
        .group_by(r.series_id)
    ).all()
    if not coarse:
        return {}
    ratio = bucket_width(_COARSE) // bucket_width(0)
    first = [(i, b * ratio, b * ratio + ratio - 1) for i, b in coarse]
    windows = _plan(session, ("series", "lo", "hi"), first)
    fine = session.execute(
        select(r.series_id, func.min(r.bucket))
        .join_from(MetricRollup.__table__, windows, r.series_id == windows.c.series)
        .where(r.level == 0, r.bucket.between(windows.c.lo, windows.c.hi), reaches)
        .group_by(r.series_id)
    ).all()
    points = _bucket_and_before(session, fine)
    return {run_of[series_id]: found for series_id, found in points.items()}


def _plan(session: Session, names: tuple[str, ...], rows: list[tuple]) -> FromClause:
    """Rows of integers as a table named `plan` to join: one statement whatever their number
    (a UNION of 100 reads takes PostgreSQL longer to plan than to run). On PostgreSQL one
    array per column, unnested, so the statement's text is the same for any rows and compiled
    once; elsewhere a VALUES list in a CTE (SQLite names VALUES columns only there)."""
    if session.get_bind().dialect.name == "postgresql":
        arrays = [
            bindparam(f"plan_{name}", list(column_), type_=ARRAY(Integer))
            for name, column_ in zip(names, zip(*rows, strict=True), strict=True)
        ]
        return func.unnest(*arrays).table_valued(*names).render_derived("plan")
    return values(*(column(name, Integer) for name in names), name="plan").data(rows).cte("plan")


def _bucket_and_before(session: Session, buckets: list[tuple[int, int]]) -> dict[int, Points]:
    """Each (series, fine bucket)'s points, after the last point before the bucket: read with
    the bucket before it, or, where that one is empty, from the last non-empty one."""
    p, r = MetricPoint.__table__.c, MetricRollup.__table__.c
    width = bucket_width(0)
    around = [(i, (b - 1) * width, (b + 1) * width - 1) for i, b in buckets]
    ranges = _plan(session, ("series", "lo", "hi"), around)
    rows = session.execute(
        select(p.series_id, p.step, p.wall_time, p.value)
        .join_from(MetricPoint.__table__, ranges, p.series_id == ranges.c.series)
        .where(p.step.between(ranges.c.lo, ranges.c.hi))
        .order_by(p.series_id, p.step)
    ).all()
    out: dict[int, Points] = {series_id: ([], [], []) for series_id, _ in buckets}
    for series_id, step, wall_time, value in rows:
        steps, times, values_ = out[series_id]
        steps.append(step), times.append(wall_time), values_.append(value)
    starts = dict(buckets)
    gaps = [
        (series_id, bucket)
        for series_id, bucket in buckets
        if bucket > 0 and (not out[series_id][0] or out[series_id][0][0] >= bucket * width)
    ]
    if gaps:  # the bucket before is empty: the last point of the last non-empty one
        plan = _plan(session, ("series", "bucket"), gaps)
        last = (
            select(r.series_id, func.max(r.bucket).label("bucket"))
            .join_from(MetricRollup.__table__, plan, r.series_id == plan.c.series)
            .where(r.level == 0, r.bucket < plan.c.bucket)
            .group_by(r.series_id)
            .subquery()
        )
        for series_id, step, wall_time, value in session.execute(
            select(r.series_id, r.last_step, r.last_time, r.last_value).join_from(
                MetricRollup.__table__,
                last,
                and_(r.series_id == last.c.series_id, r.bucket == last.c.bucket, r.level == 0),
            )
        ):
            steps, times, values_ = out[series_id]
            steps.insert(0, step), times.insert(0, wall_time), values_.insert(0, value)
    # Drop what precedes the point before the bucket (the rest of the bucket before it).
    for series_id, (steps, times, values_) in out.items():
        first = bisect.bisect_left(steps, starts[series_id] * width)
        keep = max(first - 1, 0)
        out[series_id] = (steps[keep:], times[keep:], values_[keep:])
    return out


def values_at(
    session: Session, series: Sequence[MetricSeries], steps: Mapping[str, Sequence[int]]
) -> dict[str, dict[int, float]]:
    """`{run_id: {step: value}}` of each of `series` (one per run) at the steps given for its
    run (read as the range of those steps: they are a few neighbouring ones)."""
    id_of = {s.run_id: s.id for s in series}
    ranges = [(id_of[run], min(at), max(at)) for run, at in steps.items() if run in id_of and at]
    if not ranges:
        return {}
    p = MetricPoint.__table__.c
    plan = _plan(session, ("series", "lo", "hi"), ranges)
    rows = session.execute(
        select(p.series_id, p.step, p.value)
        .join_from(MetricPoint.__table__, plan, p.series_id == plan.c.series)
        .where(p.step.between(plan.c.lo, plan.c.hi))
    ).all()
    run_of = {series_id: run_id for run_id, series_id in id_of.items()}
    out: dict[str, dict[int, float]] = {}
    for series_id, step, value in rows:
        if step in steps[run_of[series_id]]:
            out.setdefault(run_of[series_id], {})[step] = value
    return out


def median_values(
    session: Session, series: Sequence[MetricSeries], max_samples: int = 128
) -> dict[str, float]:
    """The median of each of `series` (one per run) over up to `max_samples` values spread
    evenly over its steps: all the points of a short series, else the first point of each bucket of
    the finest rollup level with at most that many buckets. PostgreSQL takes the medians
    (`percentile_cont(0.5)`: the mean of the middle two for an even count, like numpy's);
    elsewhere numpy does, on the samples."""
    p, r = MetricPoint.__table__.c, MetricRollup.__table__.c
    found = series
    short = [s.id for s in found if s.n_points <= max_samples]
    levels: dict[int, list[int]] = {}
    for s in found:
        if s.n_points > max_samples:
            levels.setdefault(choose_level(s.step_min, s.step_max, max_samples), []).append(s.id)
    sources = [(p.series_id, p.value, p.series_id.in_(short))] if short else []
    sources += [
        (r.series_id, r.first_value, and_(r.series_id.in_(ids), r.level == level))
        for level, ids in levels.items()
    ]
    medians: dict[int, float] = {}
    for series_id, value, condition in sources:
        if session.get_bind().dialect.name == "postgresql":
            median = func.percentile_cont(0.5).within_group(value)
            query = select(series_id, median).where(condition).group_by(series_id)
            medians.update(session.execute(query).all())
        else:
            medians.update(_medians(session.execute(select(series_id, value).where(condition))))
    return {s.run_id: medians[s.id] for s in found if s.id in medians}


def _medians(rows: Iterable[tuple[int, float]]) -> dict[int, float]:
    """{series: median} of (series, value) rows (read into numpy without Row objects: a list
    of Rows takes numpy 50 times longer than the query)."""
    table = np.fromiter(itertools.chain.from_iterable(rows), np.float64).reshape(-1, 2)
    table = table[np.argsort(table[:, 0], kind="stable")]
    series_ids, starts = np.unique(table[:, 0], return_index=True)
    parts = np.split(table[:, 1], starts[1:])
    return {int(i): float(np.median(part)) for i, part in zip(series_ids, parts, strict=True)}
