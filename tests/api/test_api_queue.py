"""The API with its real queue client (backend/queue.py): on the embedded broker (kombu's
filesystem transport) creating an experiment leaves one message per run in the broker's folder,
addressed to the training task; on a Redis broker that dies, creating one answers 503 and leaves
nothing behind, neither in the store nor in the queue."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from backend import queue
from backend.api.main import create_app
from backend.settings import Settings, get_settings
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC
from tests.conftest import missing_service
from tests.faults.support import REDIS_SERVER, RedisServer, waiting_runs
from tests.servers import free_port


@pytest.fixture
def embedded_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh KFAC_HOME that backend.queue's Celery app (built from the process settings)
    uses for its filesystem broker."""
    monkeypatch.setenv("KFAC_HOME", str(tmp_path))
    monkeypatch.delenv("KFAC_BROKER_URL", raising=False)
    get_settings.cache_clear()
    queue.celery_app.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    queue.celery_app.cache_clear()


def test_creating_an_experiment_sends_one_message_per_run(
    embedded_home: Path, sqlite_url: str
) -> None:
    settings = Settings(home=embedded_home, database_url=sqlite_url, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["checks"]["broker"] == "ok"
        created = client.post("/api/experiments", json=SMALL_SPEC, headers=ADMIN).json()
    messages = sorted((embedded_home / "broker" / "queue").glob("*.msg"))
    assert len(messages) == len(created["runs"]) == 4
    sent = []
    for path in messages:
        message = json.loads(path.read_text())
        assert message["headers"]["task"] == queue.TRAIN_TASK
        assert message["properties"]["delivery_info"]["routing_key"] == "cpu"
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        sent.append(args[0])
    assert sorted(sent) == sorted(run["id"] for run in created["runs"])


def test_readiness_probes_the_apps_own_database_and_broker(
    embedded_home: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process's settings point at a database and a broker that are not there; an app
    built with settings of its own is ready (and its broker folder is under its home)."""
    monkeypatch.setenv("KFAC_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    monkeypatch.setenv("KFAC_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    home = embedded_home / "app"
    settings = Settings(home=home, database_url=sqlite_url, broker_url=None)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.json() == {"status": "ok", "checks": {"broker": "ok", "database": "ok"}}
    assert (home / "broker" / "queue").is_dir()


@pytest.fixture
def redis_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A private redis-server (append-only, so a restart keeps its queue) that backend.queue's
    Celery app, built from the process settings, sends to."""
    if not Path(REDIS_SERVER).exists():
        missing_service("redis-server", f"no {REDIS_SERVER} (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    monkeypatch.setenv("KFAC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KFAC_BROKER_URL", server.url)
    get_settings.cache_clear()
    queue.celery_app.cache_clear()
    try:
        yield server
    finally:
        server.stop()
        get_settings.cache_clear()
        queue.celery_app.cache_clear()


def test_a_dead_redis_broker_is_503_and_nothing_is_half_launched(
    redis_broker: RedisServer, tmp_path: Path, sqlite_url: str
) -> None:
    """One experiment is launched while Redis is up; Redis is killed; the next launch answers
    503 with Retry-After and is neither stored nor queued: once Redis is back, its queue holds
    the first experiment's runs and nothing else."""
    settings = Settings(
        home=tmp_path / "home",
        database_url=sqlite_url,
        broker_url=redis_broker.url,
        admin_token=ADMIN_TOKEN,
    )
    launched_name, refused_name = "launched on a live Redis", "launched on a dead Redis"
    with TestClient(create_app(settings)) as client:
        first = client.post(
            "/api/experiments", json={**SMALL_SPEC, "name": launched_name}, headers=ADMIN
        )
        assert first.status_code == 201, first.text
        redis_broker.stop()  # SIGTERM: Redis writes its append-only file and exits

        refused = client.post(
            "/api/experiments", json={**SMALL_SPEC, "name": refused_name}, headers=ADMIN
        )
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "broker" in refused.json()["detail"]
        assert client.get("/readyz").json()["checks"]["broker"] == "unreachable"
        listed = client.get("/api/experiments", params={"name": refused_name}, headers=ADMIN)
        assert listed.json()["total"] == 0, listed.text

    redis_broker.start()
    queued = waiting_runs(redis.Redis(port=redis_broker.port))
    assert sorted(queued) == sorted(run["id"] for run in first.json()["runs"])
