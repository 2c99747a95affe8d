"""Reads for the API: experiments and runs, downsampled metrics, snapshots, the event log (the
list of experiments, with its searches and sorts, is `backend.store.listing`).

Every function takes the caller's `Session` and only reads. Results are ORM objects for
experiments, runs and events (the API shapes its own JSON from them) and plain JSON-ready
dicts for metrics and snapshots, whose stored form is the store's business.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, or_, select, union_all
from sqlalchemy.orm import Session, selectinload

from backend.store.models import (
    Event,
    Experiment,
    MetricPoint,
    MetricRollup,
    MetricSeries,
    Run,
    Snapshot,
)
from backend.store.rollup_reads import read_buckets
from backend.store.rollups import bucket_width, choose_level
from backend.store.snapshots import decode_matrices, pool_factor, scale_blocks, to_json_matrix

Axis = Literal["step", "time"]

# --- experiments and runs ------------------------------------------------------------------------


def get_experiment(session: Session, experiment_id: str) -> Experiment | None:
    """One experiment with its runs (in their order), or None."""
    return session.get(Experiment, experiment_id, options=[selectinload(Experiment.runs)])


def get_run(session: Session, run_id: str) -> Run | None:
    return session.get(Run, run_id)


def run_exists(session: Session, run_id: str) -> bool:
    return session.scalar(select(Run.id).where(Run.id == run_id)) is not None


def list_runs(session: Session, experiment_id: str) -> list[Run]:
    return list(
        session.scalars(
            select(Run).where(Run.experiment_id == experiment_id).order_by(Run.position)
        )
    )


# --- metrics -----------------------------------------------------------------------------------


def metric_names(session: Session, run_id: str) -> list[dict[str, Any]]:
    """The metrics a run has recorded, with their point counts and step ranges."""
    rows = session.execute(
        select(MetricSeries).where(MetricSeries.run_id == run_id).order_by(MetricSeries.name)
    ).scalars()
    return [
        {"name": s.name, "n_points": s.n_points, "step_min": s.step_min, "step_max": s.step_max}
        for s in rows
    ]


def read_metric(
    session: Session,
    run_id: str,
    name: str,
    x: Axis = "step",
    max_points: int = 2000,
    x_range: tuple[float, float] | None = None,
) -> dict[str, list[float]]:
    """One metric of one run as `{"x": [...], "y": [...]}`, at most `max_points` long."""
    series = read_metrics(session, [run_id], [name], x, max_points, x_range)
    return series.get(run_id, {}).get(name, {"x": [], "y": []})


def read_metrics(
    session: Session,
    run_ids: Sequence[str],
    names: Sequence[str],
    x: Axis = "step",
    max_points: int = 2000,
    x_range: tuple[float, float] | None = None,
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Several metrics of several runs, `{run_id: {name: {"x", "y"}}}`, in two queries at most.

    Each series comes back whole if it has at most `max_points` points in range; otherwise as
    min/max-preserving buckets read from the rollup level whose buckets number at most
    `max_points / 4` (each bucket gives its first, lowest, highest and last point), so a peak
    or a spike is never lost and the cost does not depend on the series' length. `x` is the
    step or the wall time; `x_range` restricts it (buckets at the edges may reach a little
    beyond). Series that do not exist are left out.
    """
    if x not in ("step", "time"):
        raise ValueError(f"x must be 'step' or 'time', not {x!r}")
    max_points = max(max_points, 4)
    stored = session.scalars(
        select(MetricSeries).where(MetricSeries.run_id.in_(run_ids), MetricSeries.name.in_(names))
    ).all()
    plans = [p for s in stored if (p := _plan(session, s, x, max_points, x_range)) is not None]

    points = _read_raw(session, [p for p in plans if p.level is None], x, max_points, x_range)
    for plan in plans:  # more points in range than estimated: read this one from the rollups
        if plan.level is None and len(points[plan.series.id][0]) > max_points:
            plan.level = choose_level(plan.lo, plan.hi, max_points // 4)
    points.update(_read_rollups(session, [p for p in plans if p.level is not None], x))

    result: dict[str, dict[str, dict[str, list[float]]]] = {}
    for plan in plans:
        xs, ys = points.get(plan.series.id, ([], []))
        result.setdefault(plan.series.run_id, {})[plan.series.name] = {"x": xs, "y": ys}
    return result


def iter_points(
    session: Session, run_id: str, names: Sequence[str] | None = None, batch_size: int = 10_000
) -> Iterator[tuple[str, int, float, float]]:
    """Every point of a run, `(name, step, wall_time, value)` by name then step, streamed from
    the database in batches (for exports); keep the session open while iterating."""
    series, points = MetricSeries.__table__, MetricPoint.__table__
    query = (
        select(series.c.name, points.c.step, points.c.wall_time, points.c.value)
        .join(series, series.c.id == points.c.series_id)
        .where(series.c.run_id == run_id)
        .order_by(series.c.name, points.c.step)
        .execution_options(yield_per=batch_size)
    )
    if names is not None:
        query = query.where(series.c.name.in_(names))
    for row in session.execute(query):
        yield tuple(row)


@dataclass
class _Plan:
    """How to read one series: steps [lo, hi], raw points (level None) or a rollup level."""

    series: MetricSeries
    lo: int
    hi: int
    level: int | None


def _plan(
    session: Session,
    series: MetricSeries,
    x: Axis,
    max_points: int,
    x_range: tuple[float, float] | None,
) -> _Plan | None:
    if not series.n_points:
        return None
    lo, hi = series.step_min, series.step_max
    if x_range is not None and x == "step":
        lo, hi = max(lo, math.ceil(x_range[0])), min(hi, math.floor(x_range[1]))
    elif x_range is not None:
        lo, hi = _steps_between_times(session, series.id, *x_range)
    if lo is None or hi is None or lo > hi:
        return _Plan(series, 0, -1, None)  # nothing in range: an empty read
    # Points are assumed spread evenly over the series' steps; a wrong guess costs one re-read.
    in_range = series.n_points * (hi - lo + 1) / (series.step_max - series.step_min + 1)
    level = None if in_range <= max_points else choose_level(lo, hi, max_points // 4)
    return _Plan(series, lo, hi, level)


def _steps_between_times(
    session: Session, series_id: int, start: float, stop: float
) -> tuple[int | None, int | None]:
    """The step range whose wall times overlap [start, stop], from the finest rollup level
    (a scan of 1/16 of the series; wall time grows with the step)."""
    r = MetricRollup.__table__.c
    return session.execute(
        select(func.min(r.first_step), func.max(r.last_step)).where(
            r.series_id == series_id, r.level == 0, r.last_time >= start, r.first_time <= stop
        )
    ).one()


def _read_raw(
    session: Session,
    plans: list[_Plan],
    x: Axis,
    max_points: int,
    x_range: tuple[float, float] | None,
) -> dict[int, tuple[list[float], list[float]]]:
    """Raw points of each planned series, at most `max_points + 1` each (to detect overflow)."""
    if not plans:
        return {}
    p = MetricPoint.__table__.c
    branches = []
    for plan in plans:
        query = select(p.series_id, p.step, p.wall_time, p.value).where(
            p.series_id == plan.series.id, p.step.between(plan.lo, plan.hi)
        )
        if x_range is not None and x == "time":
            query = query.where(p.wall_time.between(*x_range))
        branches.append(select(query.order_by(p.step).limit(max_points + 1).subquery()))
    out: dict[int, tuple[list[float], list[float]]] = {plan.series.id: ([], []) for plan in plans}
    for series_id, step, wall_time, value in session.execute(union_all(*branches)).all():
        xs, ys = out[series_id]
        xs.append(step if x == "step" else wall_time)
        ys.append(value)
    return out


def _read_rollups(
    session: Session, plans: list[_Plan], x: Axis
) -> dict[int, tuple[list[float], list[float]]]:
    """The distinct first/low/high/last points of every bucket in range at each plan's level."""
    ranges = []
    for plan in plans:
        width = bucket_width(plan.level)
        ranges.append((plan.series.id, plan.level, plan.lo // width, plan.hi // width))
    return read_buckets(session, ranges, x)


# --- snapshots ---------------------------------------------------------------------------------


def list_snapshots(session: Session, run_id: str) -> list[dict[str, Any]]:
    """A run's snapshots by step: id, step, and the kind and stored shape of each matrix."""
    rows = session.execute(
        select(Snapshot.id, Snapshot.run_id, Snapshot.step, Snapshot.meta, Snapshot.created_at)
        .where(Snapshot.run_id == run_id)
        .order_by(Snapshot.step)
    )
    return [
        {
            "id": row.id,
            "run_id": row.run_id,
            "step": row.step,
            "kinds": sorted(row.meta),
            "shapes": {name: info["shape"] for name, info in row.meta.items()},
            "created_at": row.created_at,
        }
        for row in rows
    ]


def latest_snapshot(session: Session, run_id: str) -> Snapshot | None:
    """A run's snapshot of the highest step, or None."""
    query = select(Snapshot).where(Snapshot.run_id == run_id).order_by(Snapshot.step.desc())
    return session.scalars(query.limit(1)).first()


def read_snapshot(
    session: Session, snapshot_id: int, names: Sequence[str] | None = None
) -> dict[str, Any] | None:
    """A snapshot with its matrices as nested lists (all, or only `names`), or None.

    `blocks` are the layer boundaries in the coordinates of the (possibly pooled) matrices,
    ready to draw over a heatmap; `parameter_blocks` are the same in parameter indices.
    """
    snapshot = session.get(Snapshot, snapshot_id)
    if snapshot is None:
        return None
    n_parameters = max((stop for _, stop in snapshot.blocks), default=0)
    factor = pool_factor(n_parameters)
    matrices = decode_matrices(snapshot.payload, names)
    return {
        "id": snapshot.id,
        "run_id": snapshot.run_id,
        "step": snapshot.step,
        "blocks": scale_blocks(snapshot.blocks, factor),
        "parameter_blocks": snapshot.blocks,
        "pool": factor,
        "matrices": {name: to_json_matrix(matrix) for name, matrix in matrices.items()},
        "meta": snapshot.meta,
        "spectra": snapshot.spectra,
        "relative_errors": snapshot.relative_errors,
        "block_averages": snapshot.block_averages,
        "extras": snapshot.extras,
        "created_at": snapshot.created_at,
    }


# --- events ------------------------------------------------------------------------------------


def events_after(
    session: Session, experiment_id: str, last_id: int = 0, limit: int | None = 500
) -> list[Event]:
    """An experiment's events with id > `last_id`, oldest first (SSE resume from Last-Event-ID)."""
    return events_after_each(session, {experiment_id: last_id}, limit)


def events_after_each(
    session: Session, cursors: Mapping[str, int], limit: int | None = 500
) -> list[Event]:
    """The events of several experiments, each after its own cursor (id > `cursors[e]`),
    oldest first, at most `limit` in all.

    Ordered by id and cut at `limit`, the answer holds for every experiment a prefix of what
    follows its cursor, so a reader that moves each cursor to the last id it received misses
    nothing (one experiment's ids follow commit order, see `writes.append_event`). One index
    range scan per experiment, in one query: the live feed reads every watched experiment
    this way. Keep `cursors` to a few hundred entries (SQLite limits an expression's depth).
    """
    if not cursors:
        return []
    after = or_(*(and_(Event.experiment_id == e, Event.id > c) for e, c in cursors.items()))
    return list(session.scalars(select(Event).where(after).order_by(Event.id).limit(limit)))


def last_event_id(session: Session, experiment_id: str) -> int:
    """The newest event id of an experiment (0 if none): where a fresh stream starts."""
    newest = session.scalar(select(func.max(Event.id)).where(Event.experiment_id == experiment_id))
    return newest or 0
