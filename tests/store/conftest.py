"""Fixtures for the store's tests: fresh databases of both kinds, migrated to head.

Each test session gets one fresh SQLite file and one fresh PostgreSQL database (created on the
server at KFAC_TEST_POSTGRES_URL, dropped at the end). Tests that take `db_url` run once on
each; the PostgreSQL run is marked `integration`. Tests share the databases, so each creates
its own experiment and looks only at its own rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest
from sqlalchemy.exc import OperationalError

from backend.store.db import dispose_engines, session_scope
from backend.store.migrate import scratch_database, upgrade
from backend.store.writes import create_experiment

POSTGRES_URL = os.environ.get(
    "KFAC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'kfac.db'}"
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


@pytest.fixture
def make_experiment(db_url: str) -> Callable[..., tuple[str, list[str]]]:
    """Create an experiment with `n_runs` queued runs; returns (experiment id, run ids)."""

    def make(n_runs: int = 1, name: str = "test experiment") -> tuple[str, list[str]]:
        runs = [
            {"label": f"run {i}", "optimizer": {"name": "sgd", "lr": 0.1}, "seed": i, "spec": {}}
            for i in range(n_runs)
        ]
        with session_scope(db_url) as session:
            experiment = create_experiment(session, name=name, spec={"model": "mlp"}, runs=runs)
            return experiment.id, [run.id for run in experiment.runs]

    return make
