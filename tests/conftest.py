"""Fixtures shared by the test suites: one fresh database of each kind per test session.

The SQLite file lives in the session's temporary directory; the PostgreSQL database is created
on the server at KFAC_TEST_POSTGRES_URL and dropped at the end. Both are migrated to head by
Alembic. Tests that take `db_url` run once on each (the PostgreSQL run is marked
`integration`); they share the databases, so each test creates its own rows and looks only at
those.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy.exc import OperationalError

from backend.store.db import dispose_engines
from backend.store.migrate import scratch_database, upgrade

POSTGRES_URL = os.environ.get(
    "KFAC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'kfac.db'}"
    upgrade(url)
    yield url
    dispose_engines()


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    with ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_database(POSTGRES_URL, prefix="kfac_test"))
        except OperationalError as error:
            pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {error}")
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database: the SQLite file, then the PostgreSQL database."""
    return request.getfixturevalue(f"{request.param}_url")
