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
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

from sqlalchemy import and_, case, or_
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert, unnest_rows
from backend.store.models import ROLLUP_BASE, ROLLUP_LEVELS, MetricRollup


class Point(NamedTuple):
    step: int
    time: float
    value: float


class Summary(NamedTuple):
    """The four points a bucket keeps; ties go to the earlier step."""

    first: Point
    low: Point
    high: Point
    last: Point

    def merge(self, other: Summary) -> Summary:
        return Summary(
            first=min(self.first, other.first),  # points order by step first
            low=min(self.low, other.low, key=lambda p: (p.value, p.step)),
            high=min(self.high, other.high, key=lambda p: (-p.value, p.step)),
            last=max(self.last, other.last),
        )

    def points(self) -> list[Point]:
        """The distinct points in step order."""
        middle = sorted({self.low, self.high})
        ordered = [self.first, *middle, self.last]
        return [p for i, p in enumerate(ordered) if i == 0 or p.step != ordered[i - 1].step]


_value = itemgetter(2)


def bucket_width(level: int) -> int:
    return ROLLUP_BASE << level


def summarise(points: Sequence[Point]) -> list[dict[int, Summary]]:
    """Per level, the summary of each bucket touched by `points` (one series, in step order).

    Level 0 is built from the points, each higher level from the one below (two buckets of
    level k make one of level k + 1), so the cost is linear in the number of points.
    """
    level0: dict[int, Summary] = {}
    for bucket, group in groupby(points, key=lambda p: p.step // ROLLUP_BASE):
        in_bucket = list(group)
        # min/max return the first of equal values: with points in step order, the earliest.
        low, high = min(in_bucket, key=_value), max(in_bucket, key=_value)
        level0[bucket] = Summary(in_bucket[0], low, high, in_bucket[-1])
    levels = [level0]
    for _ in range(1, ROLLUP_LEVELS):
        parent: dict[int, Summary] = {}
        for bucket, summary in levels[-1].items():
            up = bucket // 2
            parent[up] = parent[up].merge(summary) if up in parent else summary
        levels.append(parent)
    return levels


COLUMNS = ("series_id", "level", "bucket") + tuple(
    f"{kind}_{field}" for kind in Summary._fields for field in ("step", "time", "value")
)


def merge_points(session: Session, series_points: dict[int, Sequence[Point]]) -> None:
    """Merge newly inserted points (by series id, in step order) into the stored rollups."""
    rows = [
        (series_id, level, bucket, *(number for point in summary for number in point))
        for series_id, points in series_points.items()
        for level, buckets in enumerate(summarise(points))
        for bucket, summary in buckets.items()
    ]
    if not rows:
        return
    table = MetricRollup.__table__
    insert = dialect_insert(session, table)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            _keep_better_points(insert.from_select(COLUMNS, unnest_rows(table, COLUMNS, rows)))
        )
    else:
        session.execute(
            _keep_better_points(insert), [dict(zip(COLUMNS, row, strict=True)) for row in rows]
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
