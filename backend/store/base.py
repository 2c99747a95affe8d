"""What the store's tables are made of: the declarative `Base` whose metadata holds every table
(with the constraint names Alembic needs), the column types the tables share, and how rows get
their ids and times. The tables themselves are in `backend.store.models`, which registers them
on `Base.metadata` when it is imported (Alembic's env imports it)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, MetaData, TypeDecorator
from sqlalchemy.orm import DeclarativeBase


def new_id() -> str:
    """A random 128-bit id as 32 hex characters: unique without coordination between machines."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the only kind of time the store writes)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC.

    PostgreSQL keeps the zone; SQLite stores text without it and hands back naive datetimes.
    Normalising here lets callers compare and serialise times the same way on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


# Event ids must be a rowid alias on SQLite (AUTOINCREMENT, never reused) and 64-bit elsewhere.
EventId = BigInteger().with_variant(Integer(), "sqlite")

# Explicit constraint names: Alembic's batch mode on SQLite needs them to alter tables.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
