"""Failure and limits: a database outage answers 503 (never a hang or a traceback), readiness
reports it, oversized bodies get 413; and the API process never imports torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.settings import Settings
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC, FakeBroker

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def outage_client(tmp_path: Path, broker: FakeBroker):
    """The app pointed at a PostgreSQL server that is not there."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{closed_port()}/kfac"
    settings = Settings(home=tmp_path, database_url=url, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_database_outage_is_503_everywhere_it_matters(outage_client: TestClient) -> None:
    started = time.monotonic()
    requests = [
        ("GET", "/api/experiments", None),
        ("GET", f"/api/experiments/{'0' * 32}", None),
        ("GET", f"/api/runs/{'0' * 32}/metrics", None),
        ("GET", "/api/snapshots/1", None),
        ("POST", "/api/experiments", SMALL_SPEC),
        ("POST", "/api/experiments", {"preset": "smoke"}),
    ]
    for method, path, body in requests:
        response = outage_client.request(method, path, headers=ADMIN, json=body)
        assert response.status_code == 503, (path, response.text)
        assert response.headers["retry-after"] == "5"
        assert "database" in response.json()["detail"]
    share = {"Authorization": "Bearer some-share-token"}  # checking it needs the database
    assert outage_client.get(f"/api/experiments/{'0' * 32}", headers=share).status_code == 503
    assert time.monotonic() - started < 10
    assert outage_client.get("/healthz").status_code == 200
    ready = outage_client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["database"].startswith("unreachable")
    assert ready.json()["checks"]["broker"] == "ok"


@pytest.mark.slow
def test_a_database_host_that_drops_packets_is_503_not_a_hang(
    tmp_path: Path, broker: FakeBroker
) -> None:
    url = "postgresql+psycopg://postgres@10.255.255.1:5432/kfac"  # routes nowhere
    settings = Settings(home=tmp_path, database_url=url, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        started = time.monotonic()
        assert client.get("/api/experiments", headers=ADMIN).status_code == 503
        assert time.monotonic() - started < 15
        started = time.monotonic()
        assert client.get("/readyz").status_code == 503
        assert time.monotonic() - started < 5


def test_readiness_reports_the_broker(client: TestClient, broker: FakeBroker) -> None:
    assert client.get("/readyz").json() == {
        "status": "ok",
        "checks": {"broker": "ok", "database": "ok"},
    }
    broker.down = True
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unreachable"


def test_oversized_bodies_get_413(client: TestClient) -> None:
    body = json.dumps({**SMALL_SPEC, "description": "x" * 1_100_000})
    response = client.post(
        "/api/experiments", content=body, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert response.status_code == 413


def test_the_api_process_never_imports_torch() -> None:
    """Of kfac only the torch-free modules (kfac.units: the probe's units rule) may load."""
    code = (
        "import sys, backend.api.main, backend.cli\n"
        "light = {'kfac', 'kfac.units', 'kfac.enums', 'kfac.settings'}\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'kfac', 'worker')\n"
        "         and m not in light]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KFAC_HOME": "/nonexistent/kfac-lab"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
