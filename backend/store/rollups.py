"""The metric rollup pyramid: how it is updated on write and how a read picks a level.

Level k cuts the step axis into aligned buckets of `ROLLUP_BASE * 2**k` steps and keeps, per
bucket, four points of the series: the first, the lowest, the highest and the last. Those four
are exactly what a min/max-preserving downsampling shows of a bucket, so reading a series at
level k is an indexed range read of one row per bucket, whatever the length of the series.

Why this stays correct under retries: the four summaries are idempotent and associative
(merging a bucket with any part of itself changes nothing), so a batch only has to be merged
into the stored rows — `INSERT ... ON CONFLICT DO UPDATE` keeping the better of the stored and
the new point — and only the points that were actually inserted are merged, so a redelivered
batch leaves the rollups exactly as the points table.

A worker writes tens of thousands of points per batch, so the summaries are computed on numpy
columns (a few sorts per level), never point by point in Python.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import and_, case, or_
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert, unnest_rows
from backend.store.models import ROLLUP_BASE, ROLLUP_LEVELS, MetricRollup


class Points(NamedTuple):
    """Metric points as columns, sorted by (series, step), each (series, step) once."""

    series: np.ndarray  # int64 series ids
    step: np.ndarray  # int64
    time: np.ndarray  # float64
    value: np.ndarray  # float64

    def take(self, index: np.ndarray) -> Points:
        return Points(*(column[index] for column in self))

    def run_starts(self, key: np.ndarray | None = None) -> np.ndarray:
        """A mask of the points that start a run of equal series (and equal `key`)."""
        starts = np.ones(len(self.series), dtype=bool)
        starts[1:] = self.series[1:] != self.series[:-1]
        if key is not None:
            starts[1:] |= key[1:] != key[:-1]
        return starts


KINDS = ("first", "low", "high", "last")  # ties between equal values go to the earlier step
COLUMNS = ("series_id", "level", "bucket") + tuple(
    f"{kind}_{field}" for kind in KINDS for field in ("step", "time", "value")
)


def bucket_width(level: int) -> int:
    return ROLLUP_BASE << level


def summarise(points: Points) -> dict[str, np.ndarray]:
    """The rollup rows (columns named as in `COLUMNS`) of every bucket, at every level, that
    `points` touch.

    Level 0 summarises the points; level k + 1 summarises the up-to-four points kept per
    bucket of level k, which hold the first, lowest, highest and last point of each of its
    buckets. So the work is linear in the number of points plus the number of buckets.
    """
    levels = []
    candidates = points
    for level in range(ROLLUP_LEVELS):
        bucket = candidates.step // bucket_width(level)
        chosen = _pick(candidates, bucket)
        first = chosen["first"]
        row = {
            "series_id": candidates.series[first],
            "level": np.full(len(first), level, dtype=np.int64),
            "bucket": bucket[first],
        }
        for kind, index in chosen.items():
            row[f"{kind}_step"] = candidates.step[index]
            row[f"{kind}_time"] = candidates.time[index]
            row[f"{kind}_value"] = candidates.value[index]
        levels.append(row)
        # Sorted, distinct indices keep the (series, step) order of the candidates.
        candidates = candidates.take(np.unique(np.concatenate(list(chosen.values()))))
    return {name: np.concatenate([row[name] for row in levels]) for name in COLUMNS}


def _pick(points: Points, bucket: np.ndarray) -> dict[str, np.ndarray]:
    """For each (series, bucket) run of `points`, the index of its first, lowest, highest and
    last point. Lowest and highest come from sorts within the runs: by value, then step."""
    is_start = points.run_starts(bucket)
    starts, group = np.flatnonzero(is_start), np.cumsum(is_start)
    by_low = np.lexsort((points.step, points.value, group))
    by_high = np.lexsort((points.step, -points.value, group))
    return {
        "first": starts,
        "low": by_low[starts],
        "high": by_high[starts],
        "last": np.append(starts[1:], len(bucket)) - 1,
    }


def merge_points(session: Session, points: Points) -> None:
    """Merge newly inserted points into the stored rollups."""
    if not len(points.step):
        return
    rows = summarise(points)
    table = MetricRollup.__table__
    insert = dialect_insert(session, table)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_keep_better_points(insert.from_select(COLUMNS, unnest_rows(table, rows))))
    else:
        columns = [rows[name].tolist() for name in COLUMNS]
        session.execute(
            _keep_better_points(insert),
            [dict(zip(COLUMNS, row, strict=True)) for row in zip(*columns, strict=True)],
        )


def _keep_better_points(insert: Any) -> Any:
    """On conflict with a stored row, keep, for each of the four points, the better one."""
    new, old = insert.excluded, MetricRollup.__table__.c
    take_new = {
        "first": new.first_step < old.first_step,
        "low": or_(
            new.low_value < old.low_value,
            and_(new.low_value == old.low_value, new.low_step < old.low_step),
        ),
        "high": or_(
            new.high_value > old.high_value,
            and_(new.high_value == old.high_value, new.high_step < old.high_step),
        ),
        "last": new.last_step > old.last_step,
    }
    updates = {
        f"{kind}_{field}": case((condition, new[f"{kind}_{field}"]), else_=old[f"{kind}_{field}"])
        for kind, condition in take_new.items()
        for field in ("step", "time", "value")
    }
    return insert.on_conflict_do_update(
        index_elements=["series_id", "level", "bucket"], set_=updates
    )


def choose_level(step_lo: int, step_hi: int, max_buckets: int) -> int:
    """The finest level at which [step_lo, step_hi] spans at most `max_buckets` buckets."""
    for level in range(ROLLUP_LEVELS):
        width = bucket_width(level)
        if step_hi // width - step_lo // width + 1 <= max_buckets:
            return level
    return ROLLUP_LEVELS - 1
