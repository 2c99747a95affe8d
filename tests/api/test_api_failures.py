"""Failure and limits: a database outage answers 503 (never a hang or a traceback), readiness
reports it, oversized bodies get 413; and the API process never imports torch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.settings import Settings
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC, FakeBroker
from tests.imports import imported_after
from tests.servers import free_port

KERNEL_CONNECT_TIMEOUT_S = 127  # Linux: 6 SYN retries, 1 + 2 + ... + 64 s


@pytest.fixture
def outage_client(tmp_path: Path, broker: FakeBroker):
    """The app pointed at a PostgreSQL server that is not there."""
    url = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/kfac"
    settings = Settings(home=tmp_path, database_url=url, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_a_database_outage_is_503_everywhere_it_matters(outage_client: TestClient) -> None:
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
    """Without a connect timeout a request would wait for the kernel's, about two minutes;
    with it (CONNECT_TIMEOUT_S, 5 s) it is answered in seconds, so one minute tells the two
    apart on a machine however loaded (where the network has no route at all, both are quick).
    """
    url = "postgresql+psycopg://postgres@10.255.255.1:5432/kfac"  # routes nowhere
    settings = Settings(home=tmp_path, database_url=url, admin_token=ADMIN_TOKEN)
    with TestClient(create_app(settings)) as client:
        for path, headers in (("/api/experiments", ADMIN), ("/readyz", {})):
            started = time.monotonic()
            assert client.get(path, headers=headers).status_code == 503
            assert time.monotonic() - started < KERNEL_CONNECT_TIMEOUT_S / 2, f"{path} hung"


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
    """Nor the client's package: the wire contract is the server's (backend.tracking_protocol)."""
    api = ["backend.api.main", "backend.cli"]
    assert imported_after(api, ["torch", "kfac", "kfac_lab", "worker"]) == []
