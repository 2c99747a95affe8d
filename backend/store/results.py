"""What a run produces: metric points and curvature snapshots, written by the worker.

Both writes are idempotent (`INSERT ... ON CONFLICT DO NOTHING` on the natural key: a metric's
step, a snapshot's step), so a retried batch or a run resumed from an older checkpoint can send
the same steps again without duplicating or reordering anything, and only what is really new
goes into the experiment's event log and the metric rollups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import count, pairwise
from typing import Any

import numpy as np
from sqlalchemy import bindparam, case, func, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert, unnest_rows
from backend.store.models import MetricPoint, MetricSeries, Snapshot
from backend.store.rollups import Points, merge_points
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

    A batch is handled as numpy columns (a worker sends up to 50,000 points after an outage):
    Python touches each point only to split the tuples into columns.
    """
    names, codes, columns = _as_columns(points)
    if not names:
        return 0
    experiment_id = experiment_of(session, run_id)
    series_ids = _series_ids(session, run_id, names)
    id_of_code = np.array([series_ids[name] for name in names], dtype=np.int64)
    batch = _sorted_unique(Points(id_of_code[codes], *columns))
    new = batch.take(_insert_new_points(session, batch))
    if not len(new.step):
        return 0

    merge_points(session, new)
    bounds = np.append(np.flatnonzero(new.run_starts()), len(new.step)).tolist()
    ranges = [(int(new.series[lo]), lo, hi) for lo, hi in pairwise(bounds)]
    _update_series_totals(session, new, ranges)
    name_of = {series_id: name for name, series_id in series_ids.items()}
    series = {
        name_of[series_id]: {
            "step": new.step[lo:hi].tolist(),
            "wall_time": new.time[lo:hi].tolist(),
            "value": new.value[lo:hi].tolist(),
        }
        for series_id, lo, hi in ranges
    }
    append_event(session, experiment_id, "metrics", {"run_id": run_id, "series": series})
    return len(new.step)


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
    original_shapes: Mapping[str, Sequence[int]] | None = None,
) -> int:
    """Store a run's curvature snapshot at `step` and return its id.

    `matrices` are 2-D arrays (e.g. `exact`, `kronecker`, `kronecker_inverse`, ...) over the
    parameters, `blocks` the `[start, stop)` parameter range of each layer. Matrices larger
    than 512 x 512 are block-averaged down; everything is stored as compressed float32.
    Idempotent on (run, step): a second write returns the first snapshot's id.
    `original_shapes`: see `encode_matrices` (for matrices pooled by the sender).
    """
    experiment_id = experiment_of(session, run_id)
    payload, meta = encode_matrices(matrices, original_shapes=original_shapes)
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


def _as_columns(
    points: Iterable[tuple[str, int, float, float]],
) -> tuple[list[str], np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The finite points as (distinct names, each point's index into them, (step, wall_time,
    value) columns), in the order given. The tuples are split by `zip` and numpy, in C."""
    rows = points if isinstance(points, Sequence) else list(points)
    if not rows:
        return [], np.empty(0, dtype=np.int64), ()
    names, steps, times, values = zip(*rows, strict=True)
    first_seen: dict[str, int] = {}  # name -> position of its first point
    positions = np.fromiter(map(first_seen.setdefault, names, count()), np.int64, len(names))
    step = np.array(steps, dtype=np.int64)
    time, value = np.array(times, dtype=np.float64), np.array(values, dtype=np.float64)
    finite = np.isfinite(time) & np.isfinite(value)
    used = np.unique(positions[finite])  # names with at least one point to store
    codes = np.searchsorted(used, positions[finite])
    by_position = {position: name for name, position in first_seen.items()}
    names_used = [by_position[position] for position in used.tolist()]
    return names_used, codes, (step[finite], time[finite], value[finite])


def _sorted_unique(points: Points) -> Points:
    """The points sorted by (series, step), keeping the first given of each (series, step)."""
    order = np.lexsort((points.step, points.series))  # stable: repeats keep their order
    points = points.take(order)
    return points.take(points.run_starts(points.step))


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


def _insert_new_points(session: Session, batch: Points) -> np.ndarray:
    """Insert the points of `batch` that are not stored yet; returns the mask of those.

    The one dialect-specific write, for speed: PostgreSQL takes the batch in one statement
    (see `unnest_rows`) and says how many points it inserted, and which only when that is not
    all of them (a redelivery), so the usual answer is one row, not one per point; SQLite,
    whose writers are serialised (the transaction is already open, see `_series_ids`), drops
    the points it already has and inserts the rest with the driver's `executemany`.
    """
    table = MetricPoint.__table__
    p = table.c
    keys = _keys(batch.series, batch.step)
    if session.get_bind().dialect.name == "postgresql":
        columns = dict(zip(("series_id", "step", "wall_time", "value"), batch, strict=True))
        inserted = (
            dialect_insert(session, table)
            .from_select(list(columns), unnest_rows(table, columns))
            .on_conflict_do_nothing()
            .returning(p.series_id, p.step)
            .cte("inserted")
        )
        some_old = func.count() < len(keys)
        n_new, series, steps = session.execute(
            select(func.count(), *(case((some_old, func.array_agg(c))) for c in inserted.c))
        ).one()
        if n_new == len(keys):
            return np.ones(len(keys), dtype=bool)
        return np.isin(
            keys, _keys(np.array(series or [], np.int64), np.array(steps or [], np.int64))
        )
    lo, hi = int(batch.step.min()), int(batch.step.max())
    in_range = p.series_id.in_(np.unique(batch.series).tolist()), p.step.between(lo, hi)
    new = ~np.isin(keys, _keys_of(session.execute(select(p.series_id, p.step).where(*in_range))))
    if new.any():
        rows = zip(*(column[new].tolist() for column in batch), strict=True)
        session.connection().exec_driver_sql(_INSERT_POINTS_SQLITE, list(rows))
    return new


def _keys(series: np.ndarray, step: np.ndarray) -> np.ndarray:
    """One int64 per (series, step) (steps are 32-bit), to compare key sets with numpy."""
    return (series << 32) | (step & 0xFFFFFFFF)


def _keys_of(rows: Iterable[tuple[int, int]]) -> np.ndarray:
    pairs = np.array([tuple(row) for row in rows], dtype=np.int64).reshape(-1, 2)
    return _keys(pairs[:, 0], pairs[:, 1])


def _update_series_totals(
    session: Session, new: Points, ranges: list[tuple[int, int, int]]
) -> None:
    """Add the new points to each series' count and step range (used to choose read levels).
    `ranges` are the (series id, start, stop) of each series' points in `new`."""
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
            {
                "sid": sid,
                "added": stop - start,
                "lo": int(new.step[start]),
                "hi": int(new.step[stop - 1]),
            }
            for sid, start, stop in ranges
        ],
    )
