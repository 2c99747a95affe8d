"""Access: no token 401, a wrong one 403; the admin token writes; a share token reads its one
experiment (pages, metrics, snapshots, exports) and nothing else, and dies when revoked."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.settings import Settings
from backend.store.access import get_or_create_admin_token
from backend.store.db import session_scope
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_token_is_401_and_a_wrong_one_403(client: TestClient) -> None:
    missing = client.get("/api/experiments")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/experiments", json=SMALL_SPEC).status_code == 401
    assert client.get("/api/presets").status_code == 401
    assert client.get("/api/experiments", headers=bearer("guess")).status_code == 403
    assert client.get("/api/experiments", headers={"Authorization": "Basic x"}).status_code == 401
    # Never in the URL, where it would reach access logs and browser histories.
    assert client.get("/api/experiments", params={"token": ADMIN_TOKEN}).status_code == 401
    assert client.get("/api/presets", headers=ADMIN).status_code == 200
    assert client.get("/healthz").status_code == 200  # probes need no token


def test_a_share_token_reads_its_experiment_only(
    client: TestClient, create: Callable[..., dict]
) -> None:
    mine, other = create(), create()
    link = client.post(f"/api/experiments/{mine['id']}/share", headers=ADMIN)
    assert link.status_code == 201
    token, url = link.json()["token"], link.json()["url"]
    assert len(token) >= 22 and url == f"{mine['url']}#share={token}"
    shared = bearer(token)
    run_id, other_run = mine["runs"][0]["id"], other["runs"][0]["id"]

    for path in (
        f"/api/experiments/{mine['id']}",
        f"/api/experiments/{mine['id']}/metrics",
        f"/api/experiments/{mine['id']}/aggregate",
        f"/api/runs/{run_id}",
        f"/api/runs/{run_id}/metrics",
        f"/api/runs/{run_id}/snapshots",
        f"/api/runs/{run_id}/export",
    ):
        assert client.get(path, headers=shared).status_code == 200, path
    assert client.get(f"/api/runs/{run_id}", params={"token": token}).status_code == 401

    for path in (
        f"/api/experiments/{other['id']}",
        f"/api/experiments/{other['id']}/metrics",
        "/api/experiments",
        "/api/presets",
    ):
        assert client.get(path, headers=shared).status_code == 403, path
    for path in (f"/api/runs/{other_run}", f"/api/runs/{other_run}/metrics"):
        assert client.get(path, headers=shared).status_code == 404, path  # as a missing run

    for method, path in (
        ("POST", "/api/experiments"),
        ("POST", f"/api/experiments/{mine['id']}/cancel"),
        ("POST", f"/api/experiments/{mine['id']}/clone"),
        ("POST", f"/api/experiments/{mine['id']}/share"),
        ("DELETE", f"/api/experiments/{mine['id']}/share"),
        ("GET", f"/api/experiments/{mine['id']}/share"),
        ("DELETE", f"/api/experiments/{mine['id']}/share/1"),
        ("DELETE", f"/api/experiments/{mine['id']}"),
        ("POST", f"/api/runs/{run_id}/cancel"),
    ):
        response = client.request(method, path, headers=shared, json=SMALL_SPEC)
        assert response.status_code == 403, (method, path)
    assert client.get(f"/api/experiments/{mine['id']}", headers=ADMIN).json()["status"] == "queued"


def test_revoking_works_at_once(client: TestClient, create: Callable[..., dict]) -> None:
    experiment = create()
    path = f"/api/experiments/{experiment['id']}"
    tokens = [client.post(f"{path}/share", headers=ADMIN).json()["token"] for _ in range(2)]
    assert all(client.get(path, headers=bearer(t)).status_code == 200 for t in tokens)
    revoked = client.delete(f"{path}/share", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json() == {"revoked": 2}
    assert all(client.get(path, headers=bearer(t)).status_code == 403 for t in tokens)
    fresh = client.post(f"{path}/share", headers=ADMIN).json()["token"]
    assert client.get(path, headers=bearer(fresh)).status_code == 200


def test_without_a_configured_token_the_stored_one_is_the_admin(settings: Settings, broker) -> None:
    settings = settings.model_copy(update={"admin_token": None})
    with session_scope(settings.database_url) as session:
        stored = get_or_create_admin_token(session)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/experiments", headers=ADMIN).status_code == 403
        assert client.get("/api/experiments", headers=bearer(stored)).status_code == 200


def test_cors_is_closed_unless_origins_are_configured(settings: Settings, broker) -> None:
    preflight = {
        "Origin": "https://elsewhere.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(settings)) as client:
        answer = client.options("/api/experiments", headers=preflight)
        assert "access-control-allow-origin" not in answer.headers
        got = client.get("/healthz", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in got.headers
    opened = settings.model_copy(update={"cors_origins": ["https://elsewhere.example"]})
    with TestClient(create_app(opened)) as client:
        answer = client.options("/api/experiments", headers=preflight)
        assert answer.headers["access-control-allow-origin"] == "https://elsewhere.example"


def test_links_are_listed_and_revoked_one_by_one(
    client: TestClient, create: Callable[..., dict]
) -> None:
    experiment, other = create(), create()
    path = f"/api/experiments/{experiment['id']}"
    first, second = (client.post(f"{path}/share", headers=ADMIN).json()["token"] for _ in range(2))
    other_link = client.post(f"/api/experiments/{other['id']}/share", headers=ADMIN)
    assert other_link.status_code == 201
    listed = client.get(f"{path}/share", headers=ADMIN).json()
    assert len(listed) == 2 and all(link["last_used_at"] is None for link in listed)
    assert "token" not in listed[0] and listed[0]["created_at"] >= listed[1]["created_at"]

    assert client.get(path, headers=bearer(second)).status_code == 200
    newest, oldest = client.get(f"{path}/share", headers=ADMIN).json()
    assert newest["last_used_at"] is not None and oldest["last_used_at"] is None

    other_id = client.get(f"/api/experiments/{other['id']}/share", headers=ADMIN).json()[0]["id"]
    assert client.delete(f"{path}/share/{other_id}", headers=ADMIN).status_code == 404
    assert client.delete(f"{path}/share/{newest['id']}", headers=ADMIN).json() == {"revoked": 1}
    assert client.delete(f"{path}/share/{newest['id']}", headers=ADMIN).status_code == 404
    refused = client.get(path, headers=bearer(second))
    assert refused.status_code == 403 and "revoked" in refused.json()["detail"]
    assert client.get(path, headers=bearer(first)).status_code == 200
    unknown = client.get(path, headers=bearer("never-issued"))
    assert unknown.status_code == 403 and "revoked" not in unknown.json()["detail"]
    assert client.get(f"{path}/share", headers=ADMIN).json()[0]["revoked_at"] is not None
