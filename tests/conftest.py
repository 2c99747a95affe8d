"""Fixtures shared by the test suites: one fresh database of each kind per test session.

The SQLite file lives in the session's temporary directory; the PostgreSQL database is created
on the server at KFAC_TEST_POSTGRES_URL and dropped at the end. Both are migrated to head by
Alembic. Tests that take `db_url` run once on each (the PostgreSQL run is marked
`integration`); they share the databases, so each test creates its own rows and looks only at
those.

A test that cannot run because a service or tool is missing calls `missing_service`: it skips
on a developer's machine and fails where the services are required (`.ci/run`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import NoReturn

import pytest
from sqlalchemy.exc import OperationalError

from backend.store.db import dispose_engines
from backend.store.migrate import scratch_database, upgrade

# One torch thread in this process and in every process a test starts (they inherit it): on a
# loaded machine (CI runs at load ~10 on 2 cores) OpenMP's second thread spins waiting for a
# core, which made a short training run 2.5-4.5x slower there (docs/testing.md). Set before any
# test imports torch; what a test runs with several threads on purpose sets them itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")

POSTGRES_URL = os.environ.get(
    "KFAC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

REQUIRE_SERVICES = "KFAC_REQUIRE_SERVICES"


def services_required() -> bool:
    """Whether a missing service is an error: KFAC_REQUIRE_SERVICES=1 (`.ci/run` sets it) or,
    when the flag is unset or empty, CI set at all, as CI systems do; KFAC_REQUIRE_SERVICES=0
    turns it off even under CI."""
    flag = os.environ.get(REQUIRE_SERVICES, "")
    if flag:
        return flag != "0"
    return bool(os.environ.get("CI"))


def missing_service(name: str, reason: str) -> NoReturn:
    """End the calling test (or fixture) because the service or tool `name` is missing.

    A developer may run a subset without PostgreSQL, Redis, redis-server, Chromium or
    docker-compose, so the test skips; in CI a skip would let a machine without them go green,
    so there it fails, naming the service.
    """
    message = f"{name} is missing: {reason}"
    if services_required():
        pytest.fail(
            f"{message} ({REQUIRE_SERVICES} or CI is set: services are required)", pytrace=False
        )
    pytest.skip(message)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'kfac.db'}"
    upgrade(url)
    yield url
    dispose_engines()


@contextmanager
def postgresql_database(prefix: str = "kfac_test") -> Iterator[str]:
    """A new, migrated PostgreSQL database on the server at POSTGRES_URL, dropped at the end."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_database(POSTGRES_URL, prefix=prefix))
        except OperationalError as error:
            missing_service("PostgreSQL", f"not reachable at {POSTGRES_URL}: {error}")
        yield url


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    with postgresql_database() as url:
        yield url


@pytest.fixture
def own_postgresql_url() -> Iterator[str]:
    """A PostgreSQL database of the test's own, for a test that starts workers: a worker's
    lost-message recovery (worker/recovery.py) sends again every long-queued run it finds, and
    in the session's database those are the runs the API and store tests leave queued, which
    the test's workers would then train before and between its own runs."""
    with postgresql_database() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database: the SQLite file, then the PostgreSQL database."""
    return request.getfixturevalue(f"{request.param}_url")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files for a parallel run, and give every test a node id of its own.

    pytest-xdist (`make test`) schedules a file's tests by node id and runs one test per id.
    schemathesis names each operation's test after it (`test_api_answers_as_documented[GET
    /api/experiments]`) but gives them all the node id of the function it parametrizes (pytest
    9 builds a test's id from its function's name and parametrization, which schemathesis
    does not use); the operation goes back into the id."""
    for item in items:
        operation = item.name.removeprefix(getattr(item, "originalname", item.name))
        if operation.startswith("[") and not item.nodeid.endswith(operation):
            item._id = item._id.with_params(operation[1:-1])
    # Run in parallel, the files with slow tests start first and the many quick ones fill in
    # around them, rather than one long file trailing alone at the end (a stable sort: each
    # file's tests stay together and in order).
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
    shared = [nodeid for nodeid, count in Counter(i.nodeid for i in items).items() if count > 1]
    if shared:
        raise pytest.UsageError(f"tests share a node id, so only one of each would run: {shared}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` test in an event loop of its own, on a thread of its own.

    Playwright's sync API keeps its event loop running on the main thread from a process's
    first browser test (pytest-playwright's `playwright` fixture lives for the session) to its
    end, and no second loop can run there; in a parallel run (`make test`) a process may take
    a file of async tests after one with a browser (tests/faults opens pages, for one)."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, pyfuncitem.obj(**arguments)).result()
    return True
