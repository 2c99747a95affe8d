"""Engines and sessions: one engine per database URL per process, tuned for each dialect.

* SQLite (the embedded default) is a file in WAL journal mode, so the API can read while a
  worker writes; `busy_timeout` makes a writer wait for the lock instead of failing, and
  foreign keys are switched on (SQLite leaves them off) so deletes cascade as on PostgreSQL.
* PostgreSQL is reached through psycopg 3; plain `postgresql://` / `postgres://` URLs are
  rewritten to `postgresql+psycopg://` so the usual URL from a compose file just works.

Engines are cached per URL and dropped in a forked child (Celery's prefork pool forks after
import), because a pooled connection must never be shared by two processes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy import (
    ARRAY,
    Engine,
    Float,
    Integer,
    Select,
    SmallInteger,
    Table,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import NullType

SQLITE_BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 5  # PostgreSQL

_engines: dict[str, Engine] = {}
_session_factories: dict[str, sessionmaker[Session]] = {}


def normalise_url(url: str) -> str:
    """The URL with PostgreSQL pointed at the psycopg 3 driver, everything else unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url` (creating a SQLite file's directory if needed)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _configure_sqlite_connection)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # survive a database restart in long-lived workers
    # A database host that drops packets must fail fast (the API answers 503), not hang a
    # request for the kernel's TCP connect timeout of about two minutes.
    kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return create_engine(url, **kwargs)


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    # With WAL, NORMAL never corrupts the file; a power cut may undo the last commits only.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _resolve(url: str | None) -> str:
    if url is None:
        from backend.settings import get_settings

        url = get_settings().database_url
    return normalise_url(url)


def get_engine(url: str | None = None) -> Engine:
    """The process's shared engine for `url` (default: the configured database)."""
    url = _resolve(url)
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


def get_session_factory(url: str | None = None) -> sessionmaker[Session]:
    """A `sessionmaker` bound to the shared engine for `url`.

    `expire_on_commit=False` keeps loaded objects readable after the session closes, which is
    what the API (serialising after commit) and the worker (reading a claimed run) want.
    """
    url = _resolve(url)
    if url not in _session_factories:
        _session_factories[url] = sessionmaker(get_engine(url), expire_on_commit=False)
    return _session_factories[url]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits when the block ends and rolls back if it raises."""
    session = get_session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dialect_insert(session: Session, table: Table | type) -> Any:
    """An INSERT for the session's dialect, which has `on_conflict_do_nothing/_do_update`.

    Both supported dialects spell upserts the same way (`INSERT ... ON CONFLICT`), and
    SQLAlchemy exposes them through each dialect's own `insert`; this picks the right one.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"kfac-lab's store supports PostgreSQL and SQLite, not {dialect}")


def unnest_rows(table: Table, columns: Mapping[str, np.ndarray]) -> Select:
    """A PostgreSQL SELECT yielding the rows made of `columns` (column name -> values).

    `INSERT ... SELECT` from it writes a whole batch in one statement, with one parameter per
    column: much faster than one statement (or one VALUES group) per row, which psycopg has
    to adapt and parse value by value. Each parameter is an array in PostgreSQL's binary
    format, laid out by numpy: neither side formats or parses a number as text.
    """
    arrays = [
        cast(
            bindparam(None, _BinaryArray.of(table.c[name].type, values), type_=NullType()),
            ARRAY(table.c[name].type),
        )
        for name, values in columns.items()
    ]
    return select(*func.unnest(*arrays).table_valued(*columns).render_derived().c)


class _BinaryArray(NamedTuple):
    """A one-dimensional array to send to PostgreSQL in its binary format."""

    element_oid: int
    values: np.ndarray  # big-endian, as the format wants

    @classmethod
    def of(cls, column_type: Any, values: np.ndarray) -> _BinaryArray:
        for sql_type, oid, dtype in _BINARY_ELEMENTS:
            if isinstance(column_type, sql_type):
                values = np.asarray(values)
                if dtype.kind == "i" and len(values):
                    bounds = np.iinfo(dtype)
                    if values.min() < bounds.min or values.max() > bounds.max:
                        raise ValueError(f"a value does not fit a {column_type!r} column")
                return cls(oid, values.astype(dtype))
        raise TypeError(f"no binary array format for {column_type!r}")


# Element type oids and big-endian numpy types of the column types bulk-loaded with
# `unnest_rows`. SmallInteger comes first: it is a subclass of Integer.
_BINARY_ELEMENTS = (
    (SmallInteger, 21, np.dtype(">i2")),
    (Integer, 23, np.dtype(">i4")),
    (Float, 701, np.dtype(">f8")),
)


class _BinaryArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: _BinaryArray) -> bytes:
        """Header (dimensions, no NULLs, element type, length, lower bound 1), then each
        element as (byte length, value)."""
        n = len(obj.values)
        if n == 0:
            return struct.pack(">3i", 0, 0, obj.element_oid)
        body = np.empty(n, dtype=[("length", ">i4"), ("value", obj.values.dtype)])
        body["length"] = obj.values.dtype.itemsize
        body["value"] = obj.values
        return struct.pack(">5i", 1, 0, obj.element_oid, n, 1) + body.tobytes()


# Process-wide, which is harmless: only this private class uses it.
psycopg.adapters.register_dumper(_BinaryArray, _BinaryArrayDumper)


def dispose_engines(close: bool = True) -> None:
    """Forget all cached engines (closing their connections unless `close` is False)."""
    for engine in _engines.values():
        engine.dispose(close=close)
    _engines.clear()
    _session_factories.clear()


# In a forked child, the parent's pooled connections belong to the parent: drop them unclosed.
os.register_at_fork(after_in_child=lambda: dispose_engines(close=False))
