"""The API with the real embedded broker (kombu's filesystem transport): creating an
experiment leaves one message per run in the broker's folder, addressed to the training task."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend import queue
from backend.api.main import create_app
from backend.settings import Settings, get_settings
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC
from tests.api.test_api_failures import closed_port


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
    monkeypatch.setenv("KFAC_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{closed_port()}/x")
    monkeypatch.setenv("KFAC_BROKER_URL", f"redis://127.0.0.1:{closed_port()}/0")
    home = embedded_home / "app"
    settings = Settings(home=home, database_url=sqlite_url, broker_url=None)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
    assert ready.json() == {"status": "ok", "checks": {"broker": "ok", "database": "ok"}}
    assert (home / "broker" / "queue").is_dir()
