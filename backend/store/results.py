"""What a run produces: metric points and curvature snapshots, written by the worker.

Both writes are idempotent (`INSERT ... ON CONFLICT DO NOTHING` on the natural key: a metric's
step, a snapshot's step), so a retried batch or a run resumed from an older checkpoint can send
the same steps again without duplicating or reordering anything, and only what is really new
goes into the experiment's event log and the metric rollups.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import bindparam, case, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert, unnest_rows
from backend.store.models import MetricPoint, MetricSeries, Snapshot
from backend.store.rollups import Point, merge_points
from backend.store.snapshots import encode_matrices, to_jsonable
from backend.store.writes import append_event, experiment_of


def write_metrics(
    session: Session, run_id: str, points: Iterable[tuple[str, int, float, float]]
) -> int:
    """Record metric points `(name, step, wall_time, value)`; returns how many were new.

    Idempotent: a (metric, step) already stored keeps its first value, so a batch sent twice
    changes nothing and its second event is not sent. Non-finite values are skipped (JSON has
    no NaN; a diverged run says where it diverged in its status). The new points go into the
    rollups (for fast downsampled reads) and into one `metrics` event.
    """
    by_name: dict[str, dict[int, Point]] = {}
    for name, step, wall_time, value in points:
        if math.isfinite(value) and math.isfinite(wall_time):
            point = Point(int(step), float(wall_time), float(value))
            by_name.setdefault(name, {}).setdefault(point.step, point)
    if not by_name:
        return 0
    experiment_id = experiment_of(session, run_id)
    series_ids = _series_ids(session, run_id, sorted(by_name))

    rows = [
        (series_ids[name], p.step, p.time, p.value)
        for name, steps in by_name.items()
        for p in steps.values()
    ]
    new: dict[int, list[Point]] = {}
    for series_id, step, wall_time, value in _insert_new_points(session, rows):
        new.setdefault(series_id, []).append(Point(step, wall_time, value))
    if not new:
        return 0
    for series_points in new.values():
        series_points.sort()

    merge_points(session, new)
    _update_series_totals(session, new)
    names = {series_id: name for name, series_id in series_ids.items()}
    series = {
        names[series_id]: {
            "step": [p.step for p in pts],
            "wall_time": [p.time for p in pts],
            "value": [p.value for p in pts],
        }
        for series_id, pts in new.items()
    }
    append_event(session, experiment_id, "metrics", {"run_id": run_id, "series": series})
    return sum(len(pts) for pts in new.values())


def write_snapshot(
    session: Session,
    run_id: str,
    step: int,
    matrices: Mapping[str, np.ndarray],
    blocks: Sequence[Sequence[int]],
    *,
    spectra: Mapping[str, Any] | None = None,
    relative_errors: Mapping[str, Any] | None = None,
    block_averages: Mapping[str, Any] | None = None,
    extras: Mapping[str, Any] | None = None,
) -> int:
    """Store a run's curvature snapshot at `step` and return its id.

    `matrices` are 2-D arrays (e.g. `exact`, `kronecker`, `kronecker_inverse`, ...) over the
    parameters, `blocks` the `[start, stop)` parameter range of each layer. Matrices larger
    than 512 x 512 are block-averaged down; everything is stored as compressed float32.
    Idempotent on (run, step): a second write returns the first snapshot's id.
    """
    experiment_id = experiment_of(session, run_id)
    payload, meta = encode_matrices(matrices)
    table = Snapshot.__table__
    statement = (
        dialect_insert(session, table)
        .values(
            run_id=run_id,
            step=step,
            blocks=[[int(start), int(stop)] for start, stop in blocks],
            meta=meta,
            payload=payload,
            spectra=to_jsonable(spectra),
            relative_errors=to_jsonable(relative_errors),
            block_averages=to_jsonable(block_averages),
            extras=to_jsonable(extras),
        )
        .on_conflict_do_nothing(index_elements=["run_id", "step"])
        .returning(table.c.id)
    )
    snapshot_id = session.execute(statement).scalar()
    if snapshot_id is None:
        return session.scalar(
            select(Snapshot.id).where(Snapshot.run_id == run_id, Snapshot.step == step)
        )
    append_event(
        session,
        experiment_id,
        "snapshot",
        {"run_id": run_id, "snapshot_id": snapshot_id, "step": step, "kinds": sorted(meta)},
    )
    return snapshot_id


def _series_ids(session: Session, run_id: str, names: list[str]) -> dict[str, int]:
    """The series id of each metric name of a run, creating the missing series.

    The insert comes first on purpose: on SQLite it opens the write transaction, so the
    duplicate check in `_insert_new_points` cannot race another writer.
    """
    table = MetricSeries.__table__
    session.execute(
        dialect_insert(session, table).on_conflict_do_nothing(),
        [{"run_id": run_id, "name": name, "n_points": 0} for name in names],
    )
    query = select(table.c.name, table.c.id).where(
        table.c.run_id == run_id, table.c.name.in_(names)
    )
    return dict(session.execute(query).all())


_INSERT_POINTS_SQLITE = (
    "INSERT INTO metric_points (series_id, step, wall_time, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)


def _insert_new_points(
    session: Session, rows: list[tuple[int, int, float, float]]
) -> list[tuple[int, int, float, float]]:
    """Insert `(series_id, step, wall_time, value)` rows; return those that were not stored yet.

    The one dialect-specific write, for speed (a batch can hold tens of thousands of points):
    PostgreSQL takes the batch in one statement (see `unnest_rows`) and reports the rows it
    inserted; SQLite, whose writers are serialised (the transaction is already open, see
    `_series_ids`), drops the rows it already has and inserts the rest with the driver's
    `executemany`.
    """
    table = MetricPoint.__table__
    if session.get_bind().dialect.name == "postgresql":
        columns = ("series_id", "step", "wall_time", "value")
        statement = (
            dialect_insert(session, table)
            .from_select(columns, unnest_rows(table, columns, rows))
            .on_conflict_do_nothing()
            .returning(*(table.c[name] for name in columns))
        )
        return [tuple(row) for row in session.execute(statement)]
    p = table.c
    existing = set(
        session.execute(
            select(p.series_id, p.step).where(
                p.series_id.in_({row[0] for row in rows}),
                p.step.between(min(row[1] for row in rows), max(row[1] for row in rows)),
            )
        ).all()
    )
    fresh = [row for row in rows if (row[0], row[1]) not in existing]
    if fresh:
        session.connection().exec_driver_sql(_INSERT_POINTS_SQLITE, fresh)
    return fresh


def _update_series_totals(session: Session, new: dict[int, list[Point]]) -> None:
    """Add the new points to each series' count and step range (used to choose read levels)."""
    table = MetricSeries.__table__
    lo, hi = bindparam("lo"), bindparam("hi")
    statement = (
        sql_update(table)
        .where(table.c.id == bindparam("sid"))
        .values(
            n_points=table.c.n_points + bindparam("added"),
            step_min=case(
                (or_(table.c.step_min.is_(None), table.c.step_min > lo), lo), else_=table.c.step_min
            ),
            step_max=case(
                (or_(table.c.step_max.is_(None), table.c.step_max < hi), hi), else_=table.c.step_max
            ),
        )
    )
    session.execute(
        statement,
        [
            {"sid": sid, "added": len(pts), "lo": pts[0].step, "hi": pts[-1].step}
            for sid, pts in new.items()
        ],
    )
