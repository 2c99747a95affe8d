"""Fixtures for the API's tests: an app on a fresh SQLite file and on a fresh PostgreSQL
database (one of each per test session, migrated to head), a fake broker that records what
the API sends, TestClient helpers, and a real uvicorn server for the event-stream tests.

Tests share the databases, so each creates its own experiments and looks only at those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend import queue
from backend.api.main import create_app
from backend.settings import Settings
from backend.store.db import session_scope
from backend.store.writes import claim_run, set_status
from tests.servers import ThreadedServer

ADMIN_TOKEN = "admin-token-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

SMALL_SPEC = {
    "name": "small comparison",
    "base": {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8]}, "steps": 20},
    "optimizers": [{"name": "kfac"}, {"name": "sgd_momentum", "lr": 0.05}],
    "seeds": [0, 1],
}


@dataclass
class FakeBroker:
    """Stands in for `backend.queue`: records sent and revoked tasks, can be made to fail."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    down: bool = False

    def send_run(self, run_id: str, queue_name: str) -> str:
        if self.down:
            raise ConnectionError("broker down")
        self.sent.append((run_id, queue_name))
        return f"task-{run_id}"

    def revoke(self, task_id: str) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.revoked.append(task_id)

    def broker_reachable(self, timeout: float = 2.0, settings: Settings | None = None) -> bool:
        return not self.down


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> FakeBroker:
    fake = FakeBroker()
    for name in ("send_run", "revoke", "broker_reachable"):
        monkeypatch.setattr(queue, name, getattr(fake, name))
    return fake


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, database_url=db_url, admin_token=ADMIN_TOKEN)


@pytest.fixture
def app(settings: Settings, broker: FakeBroker) -> FastAPI:
    return create_app(settings, frontend_dir=settings.home / "frontend")


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def create(client: TestClient) -> Callable[..., dict]:
    """POST an experiment (default: 4 small runs) as the admin; returns the created JSON."""

    def make(body: dict | None = None) -> dict:
        response = client.post("/api/experiments", json=body or SMALL_SPEC, headers=ADMIN)
        assert response.status_code == 201, response.text
        return response.json()

    return make


def finish_run(db_url: str, run_id: str, status: str = "succeeded", **fields) -> None:
    """Play a worker: claim the run and end it with `status`."""
    with session_scope(db_url) as session:
        assert claim_run(session, run_id, "test-worker") is not None
        set_status(session, run_id, status, **fields)


# --- a real server, for event streams ------------------------------------------------------


@dataclass
class LiveServer:
    url: str
    app: FastAPI


@pytest.fixture
def live_server(settings: Settings, broker: FakeBroker) -> Iterator[LiveServer]:
    """An app of its own (one app lives in one event loop) served by uvicorn in a thread, on
    the same database as `client`."""
    server = ThreadedServer(lambda: create_app(settings, frontend_dir=settings.home / "frontend"))
    server.start()
    try:
        yield LiveServer(server.url, server.app)
    finally:
        server.stop()
