"""Reading rollup buckets as curves, fast: what an experiment page costs the store.

A page asks for 10 runs x 4 metrics x ~400 buckets, some 15,000 rollup rows of four points
each. Fetched as rows and walked in Python, they cost about 50 ms; here nothing runs per row
in Python. PostgreSQL packs the rows into one binary string that numpy reads as it is
(`_fetch_packed`), other databases return plain rows made into one array (`_fetch_rows`), and
`_bucket_points` turns the buckets into points with a few numpy operations.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal

import numpy as np
from sqlalchemy import select, union_all
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from backend.store.models import MetricRollup
from backend.store.rollups import KINDS

# A rollup range to read: (series id, level, first bucket, last bucket).
BucketRange = tuple[int, int, int, int]
Curves = dict[int, tuple[list[float], list[float]]]


def read_buckets(
    session: Session, ranges: Sequence[BucketRange], x: Literal["step", "time"]
) -> Curves:
    """Each range's curve, `{series_id: (xs, ys)}`: the distinct first/low/high/last points
    of its buckets in step order; x is the step or the wall time. Every range's series
    appears (with empty lists if it has no bucket in range)."""
    if not ranges:
        return {}
    fields = ("step", "time", "value") if x == "time" else ("step", "value")
    columns = [f"{kind}_{field}" for field in fields for kind in KINDS]
    fetch = _fetch_packed if session.get_bind().dialect.name == "postgresql" else _fetch_rows
    series_ids, table = fetch(session, ranges, columns)
    xs = table[:, 4:8] if x == "time" else None
    curves: Curves = {series_id: ([], []) for series_id, *_ in ranges}
    curves.update(_bucket_points(series_ids, table[:, :4], xs, table[:, -4:]))
    return curves


def _fetch_rows(
    session: Session, ranges: Sequence[BucketRange], columns: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The `columns` of the rollup rows in `ranges`, in (series, bucket) order, as their
    series ids and an (n, len(columns)) float array: one indexed range read per range."""
    r = MetricRollup.__table__.c
    branches = [
        select(r.series_id, r.bucket, *(r[name] for name in columns)).where(
            r.series_id == series_id, r.level == level, r.bucket.between(first, last)
        )
        for series_id, level, first, last in ranges
    ]
    query = union_all(*branches)
    query = query.order_by(query.selected_columns.series_id, query.selected_columns.bucket)
    rows = session.execute(query).all()
    numbers = itertools.chain.from_iterable(rows)  # numpy reads an iterator of floats fastest
    table = np.fromiter(numbers, dtype=np.float64, count=len(rows) * (2 + len(columns)))
    table = table.reshape(len(rows), 2 + len(columns))
    return table[:, 0], table[:, 2:]


def _fetch_packed(
    session: Session, ranges: Sequence[BucketRange], columns: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """`_fetch_rows` for PostgreSQL, several times as fast.

    The server concatenates each column's values in their binary send format (big-endian int4
    and float8) into one bytea per column, fetched in binary and read by numpy as it is: no
    Python object per number and no per-row protocol overhead. One aggregate per column, and
    none of them ordered: every aggregate of one query sees the rows in the same order, so the
    columns line up, and numpy sorts them by (series, step) afterwards. (Concatenating each
    row's values first and ordering the aggregate took twice as long in the server: an
    intermediate bytea per value and a sort.) The ranges go in as arrays joined to the table:
    one short statement whatever the number of series (a UNION of 40 range reads takes longer
    to plan, and PostgreSQL runs it as a parallel query, slower still).
    """
    names = ["series_id", *columns]
    formats = [">i4" if name == "series_id" or name.endswith("_step") else ">f8" for name in names]
    aggregates = ", ".join(
        f"string_agg({'int4send' if fmt == '>i4' else 'float8send'}(r.{name}), ''::bytea)"
        for name, fmt in zip(names, formats, strict=True)
    )
    statement = (
        f"SELECT {aggregates}"
        " FROM unnest(%s::int[], %s::int[], %s::int[], %s::int[]) AS plan(series, level, lo, hi)"
        f" JOIN {MetricRollup.__tablename__} AS r"
        " ON r.series_id = plan.series AND r.level = plan.level"
        " AND r.bucket BETWEEN plan.lo AND plan.hi"
    )
    parameters = [list(column) for column in zip(*ranges, strict=True)]
    connection = session.connection()
    driver = connection.connection.driver_connection  # psycopg, for binary results
    try:
        with driver.cursor(binary=True) as cursor:
            packed = cursor.execute(statement, parameters).fetchone()
    except driver.Error as error:  # as SQLAlchemy would: a lost database is a 503, and the
        connection.invalidate(error)  # connection (maybe dead) leaves the pool
        raise DBAPIError.instance(statement, parameters, error, driver.Error) from error
    series_ids, *values = (
        np.frombuffer(data or b"", dtype=fmt) for data, fmt in zip(packed, formats, strict=True)
    )
    # Within a range (one series, one level) the buckets' first steps rise with the bucket.
    order = np.lexsort((values[0], series_ids))
    table = np.empty((len(order), len(columns)), dtype=np.float64)
    for index, column in enumerate(values):
        table[:, index] = column[order]
    return series_ids[order], table


def _bucket_points(
    series_ids: np.ndarray, steps: np.ndarray, xs: np.ndarray | None, ys: np.ndarray
) -> Curves:
    """Each series' points from its buckets (rows in series then bucket order; columns first,
    low, high, last): per bucket the first point, the lower and the higher of low/high by
    step, the last, skipping a step already taken (the four often coincide in sparse
    buckets). x is the time if `xs` is given, else the step."""
    if not len(series_ids):
        return {}
    steps, ys = steps.astype(np.int64), ys.copy()
    xs = None if xs is None else xs.copy()
    swapped = steps[:, 1] > steps[:, 2]  # the highest point comes before the lowest
    for column in (steps, ys) if xs is None else (steps, xs, ys):
        column[swapped, 1:3] = column[swapped, 2:0:-1]
    series = np.repeat(np.asarray(series_ids, dtype=np.int64), 4)
    steps, ys = steps.ravel(), ys.ravel()
    xs = steps if xs is None else xs.ravel()
    keep = np.ones(len(steps), dtype=bool)
    keep[1:] = (steps[1:] != steps[:-1]) | (series[1:] != series[:-1])
    series, x_values, y_values = series[keep], xs[keep].tolist(), ys[keep].tolist()
    starts = np.flatnonzero(np.diff(series, prepend=-1)).tolist()
    bounds = zip(starts, [*starts[1:], len(series)], strict=True)
    return {
        int(series[start]): (x_values[start:stop], y_values[start:stop]) for start, stop in bounds
    }
