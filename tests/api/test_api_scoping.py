"""A share token reads its one experiment and nothing else — no endpoint that is not about an
experiment, run or snapshot of its own — and cannot learn which ids of other experiments
exist: a run or snapshot of another experiment answers exactly as a missing one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from backend.store.db import session_scope
from backend.store.results import write_snapshot
from tests.api.conftest import ADMIN

MISSING_RUN = "0" * 32
MISSING_SNAPSHOT = 2**31 - 1


def share(client: TestClient, experiment: dict) -> dict[str, str]:
    response = client.post(f"/api/experiments/{experiment['id']}/share", headers=ADMIN)
    assert response.status_code == 201
    return {"Authorization": f"Bearer {response.json()['token']}"}


def api_paths_without_ids(client: TestClient) -> set[str]:
    """The GET endpoints under /api (all are documented) that name no experiment, run or
    snapshot."""
    return {
        path
        for path, operations in client.get("/openapi.json").json()["paths"].items()
        if path.startswith("/api/") and "{" not in path and "get" in operations
    }


def test_a_share_token_reads_no_endpoint_outside_its_experiment(
    client: TestClient, create: Callable[..., dict]
) -> None:
    shared = share(client, create())
    paths = api_paths_without_ids(client)
    assert {"/api/presets", "/api/experiments"} <= paths
    for path in sorted(paths):
        response = client.get(path, headers=shared)
        assert response.status_code == 403, (path, response.status_code)
        assert client.get(path, headers=ADMIN).status_code == 200, path


def test_ids_of_another_experiment_answer_as_missing_ones(
    client: TestClient, create: Callable[..., dict], db_url: str
) -> None:
    mine, other = create(), create()
    shared = share(client, mine)
    other_run = other["runs"][0]["id"]
    with session_scope(db_url) as session:
        snapshot_id = write_snapshot(session, other_run, 10, {"exact": np.eye(4)}, [[0, 4]])
    pairs = [
        (f"/api/snapshots/{snapshot_id}", f"/api/snapshots/{MISSING_SNAPSHOT}"),
        (f"/api/runs/{other_run}", f"/api/runs/{MISSING_RUN}"),
        (f"/api/runs/{other_run}/metrics", f"/api/runs/{MISSING_RUN}/metrics"),
        (f"/api/runs/{other_run}/snapshots", f"/api/runs/{MISSING_RUN}/snapshots"),
        (f"/api/runs/{other_run}/export", f"/api/runs/{MISSING_RUN}/export"),
    ]
    for existing, missing in pairs:
        assert client.get(existing, headers=ADMIN).status_code == 200, existing
        seen, unseen = client.get(existing, headers=shared), client.get(missing, headers=shared)
        assert seen.status_code == unseen.status_code == 404, existing
        assert seen.json() == unseen.json(), existing
        assert seen.headers["content-type"] == unseen.headers["content-type"]
    # The share token still reads its own run's snapshot.
    own_run = mine["runs"][0]["id"]
    with session_scope(db_url) as session:
        own_snapshot = write_snapshot(session, own_run, 10, {"exact": np.eye(4)}, [[0, 4]])
    assert client.get(f"/api/snapshots/{own_snapshot}", headers=shared).status_code == 200
