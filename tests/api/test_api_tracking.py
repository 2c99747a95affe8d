"""The tracking endpoints: tracked runs created by name, idempotent writes, validation (422,
never 500), admin only, live events like worker runs, and no re-queueing of tracked runs."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.store.db import session_scope
from backend.store.queries import events_after
from backend.store.snapshots import MAX_SIDE, block_pool
from backend.store.writes import requeue_stale, stale_runs
from tests.api.conftest import ADMIN

BASE = "/api/tracking/runs"


def new_run(client: TestClient, experiment: str, **fields) -> dict:
    body = {"id": uuid.uuid4().hex, "experiment": experiment, **fields}
    response = client.post(BASE, json=body, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def matrix(values: np.ndarray) -> dict:
    pooled = block_pool(values, MAX_SIDE)
    return {
        "dtype": "float32",
        "shape": list(pooled.shape),
        "original_shape": list(values.shape),
        "data": base64.b64encode(pooled.astype("<f4").tobytes()).decode(),
    }


def test_runs_of_one_name_join_one_experiment_and_retries_are_harmless(client: TestClient):
    name = f"my net {uuid.uuid4().hex[:6]}"
    first = new_run(client, name, label="kfac", config={"optimizer": "kfac", "lr": 0.1})
    body = {"id": uuid.uuid4().hex, "experiment": name, "label": "sgd"}
    second = client.post(BASE, json=body, headers=ADMIN).json()
    again = client.post(BASE, json=body, headers=ADMIN).json()
    assert first["experiment_id"] == second["experiment_id"] == again["experiment_id"]
    assert (second["created"], again["created"]) == (True, False)
    assert again["run_id"] == second["run_id"]
    experiment = client.get(f"/api/experiments/{first['experiment_id']}", headers=ADMIN).json()
    assert [run["label"] for run in experiment["runs"]] == ["kfac", "sgd"]
    assert experiment["status"] == "running"
    assert [run["status"] for run in experiment["runs"]] == ["running", "running"]
    assert experiment["runs"][0]["optimizer"] == {"name": "kfac"}


def test_metrics_are_idempotent_and_fire_live_events(client: TestClient, db_url: str):
    created = new_run(client, f"metrics {uuid.uuid4().hex[:6]}")
    run_id = created["run_id"]
    points = [["train_loss", step, 0.1 * step, 1.0 / (step + 1)] for step in range(5)]
    answers = [
        client.post(f"{BASE}/{run_id}/metrics", json={"points": points}, headers=ADMIN).json()
        for _ in range(2)
    ]
    assert [a["stored"] for a in answers] == [5, 0]
    series = client.get(f"/api/runs/{run_id}/metrics", headers=ADMIN).json()["series"]
    assert series["train_loss"]["y"] == pytest.approx([1.0 / (s + 1) for s in range(5)])
    run = client.get(f"/api/runs/{run_id}", headers=ADMIN).json()
    assert run["step"] == 4
    with session_scope(db_url) as session:
        kinds = [e.kind for e in events_after(session, created["experiment_id"], 0)]
    assert kinds.count("metrics") == 1 and "status" in kinds


def test_end_sets_the_outcome_once(client: TestClient):
    run_id = new_run(client, f"end {uuid.uuid4().hex[:6]}")["run_id"]
    body = {"status": "failed", "error": "ValueError: boom", "step": 3}
    ended = client.post(f"{BASE}/{run_id}/end", json=body, headers=ADMIN).json()
    assert (ended["status"], ended["error"], ended["step"]) == ("failed", "ValueError: boom", 3)
    retried = client.post(f"{BASE}/{run_id}/end", json=body, headers=ADMIN)
    assert (retried.status_code, retried.json()["status"]) == (200, "failed")
    other = client.post(f"{BASE}/{run_id}/end", json={"status": "succeeded"}, headers=ADMIN)
    assert other.status_code == 409
    ended = f"run {run_id} has ended failed: ValueError: boom; it takes no more records"
    assert other.json()["detail"] == ended
    assert client.get(f"/api/runs/{run_id}", headers=ADMIN).json()["status"] == "failed"


def test_snapshot_round_trip_with_pooling(client: TestClient):
    run_id = new_run(client, f"snap {uuid.uuid4().hex[:6]}")["run_id"]
    side = 600  # larger than the stored side: the client pools, the store keeps the blocks
    rng = np.random.default_rng(0)
    exact = rng.standard_normal((side, side))
    body = {
        "step": 10,
        "blocks": [[0, 300], [300, 600]],
        "matrices": {"exact": matrix(exact), "kronecker": matrix(exact * 2)},
        "extras": {"layer_names": ["a", "b"]},
    }
    response = client.post(f"{BASE}/{run_id}/snapshots", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    listed = client.get(f"/api/runs/{run_id}/snapshots", headers=ADMIN).json()
    assert [s["step"] for s in listed] == [10]
    stored = client.get(f"/api/snapshots/{listed[0]['id']}", headers=ADMIN).json()
    got = np.array(stored["matrices"]["exact"])
    assert got.shape == (300, 300)
    np.testing.assert_allclose(got, block_pool(exact), rtol=1e-5, atol=1e-6)
    assert stored["blocks"] == [[0, 150], [150, 300]]  # in the pooled matrix's coordinates


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("metrics", {"points": [["train_loss", 1, 0.0, "NaN"]]}, "points"),
        ("metrics", {"points": [["bad name!", 1, 0.0, 1.0]]}, "points"),
        ("metrics", {"points": [["loss", -1, 0.0, 1.0]]}, "points"),
        ("metrics", {"points": [["loss", 1, 0.0, 1.0]] * 10_001}, "points"),
        ("end", {"status": "exploded"}, "status"),
        ("end", {"final_metrics": {"loss": "Infinity"}}, "final_metrics"),
        # Strict types, as the published schema says (lax parsing took "1" and true as 1).
        ("metrics", {"points": [["loss", "1", 0.0, 1.0]]}, "points"),
        ("metrics", {"points": [["loss", True, 0.0, 1.0]]}, "points"),
        ("metrics", {"points": [["loss", 1, 0.0, "1.5"]]}, "points"),
        ("end", {"step": "3"}, "step"),
        ("end", {"final_metrics": {"loss": True}}, "final_metrics"),
        ("end", {"final_metrics": {"bad name!": 1.0}}, "final_metrics"),
    ],
)
def test_bad_writes_are_422_naming_the_field(client: TestClient, path, body, field):
    run_id = new_run(client, f"bad {uuid.uuid4().hex[:6]}")["run_id"]
    response = client.post(f"{BASE}/{run_id}/{path}", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert any(field in map(str, error["loc"]) for error in response.json()["detail"])


def bad_snapshots() -> list[tuple[dict, str]]:
    good = matrix(np.eye(4))
    nan = matrix(np.full((4, 4), np.nan))
    wrong_size = {**good, "data": base64.b64encode(b"\0" * 12).decode()}
    wrong_shape = {**good, "shape": [2, 2]}
    too_big = {**good, "original_shape": [5000, 5000]}
    blocks = [[0, 4]]
    return [
        ({"step": 1, "blocks": blocks, "matrices": {"exact": nan}}, "matrices"),
        ({"step": 1, "blocks": blocks, "matrices": {"exact": wrong_size}}, "matrices"),
        ({"step": 1, "blocks": blocks, "matrices": {"exact": wrong_shape}}, "matrices"),
        ({"step": 1, "blocks": blocks, "matrices": {"exact": too_big}}, "matrices"),
        ({"step": 1, "blocks": [[0, 5]], "matrices": {"exact": good}}, "body"),
        ({"step": 1, "blocks": blocks, "matrices": {"exact": {**good, "data": "!!"}}}, "matrices"),
        ({"step": 1, "blocks": blocks, "matrices": {"Exact!": good}}, "matrices"),
        ({"step": "1", "blocks": blocks, "matrices": {"exact": good}}, "step"),
        ({"step": 1, "blocks": [[0, True]], "matrices": {"exact": good}}, "blocks"),
    ]


@pytest.mark.parametrize(("body", "field"), bad_snapshots())
def test_bad_snapshots_are_422(client: TestClient, body: dict, field: str):
    run_id = new_run(client, f"bad snap {uuid.uuid4().hex[:6]}")["run_id"]
    response = client.post(f"{BASE}/{run_id}/snapshots", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert any(field in map(str, error["loc"]) for error in response.json()["detail"])


def test_bad_creates_are_422(client: TestClient):
    for body in (
        {"id": "not-hex", "experiment": "x"},
        {"id": uuid.uuid4().hex, "experiment": ""},
        {"id": uuid.uuid4().hex, "experiment": "x", "config": {"v": "x" * 30_000}},
        {"id": uuid.uuid4().hex, "experiment": "x", "seed": False},
        {"id": uuid.uuid4().hex, "experiment": "x", "seed": "1"},
        {"id": uuid.uuid4().hex, "experiment": "x", "total_steps": True},
    ):
        response = client.post(BASE, json=body, headers=ADMIN)
        assert response.status_code == 422, (body, response.text)


def test_json_integers_written_as_floats_are_integers(client: TestClient):
    """JSON Schema's integer takes 10.0, so the server does too (as it does for specs)."""
    run_id = new_run(client, f"floats {uuid.uuid4().hex[:6]}", seed=3.0)["run_id"]
    points = {"points": [["loss", 2.0, 0.5, 1.0]]}
    answer = client.post(f"{BASE}/{run_id}/metrics", json=points, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["stored"] == 1, answer.text
    snapshot = {"step": 4.0, "blocks": [[0.0, 4.0]], "matrices": {"exact": matrix(np.eye(4))}}
    snapshot["matrices"]["exact"]["shape"] = [4.0, 4.0]
    answer = client.post(f"{BASE}/{run_id}/snapshots", json=snapshot, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    answer = client.post(f"{BASE}/{run_id}/end", json={"step": 9.0}, headers=ADMIN)
    assert answer.status_code == 200, answer.text


def test_named_mappings_publish_that_other_keys_are_refused(client: TestClient):
    """A mapping keyed by a pattern refuses other keys, and its published schema says so
    (`patternProperties` alone would allow them)."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    matrices = schemas["SnapshotIn"]["properties"]["matrices"]
    final_metrics = schemas["EndRun"]["properties"]["final_metrics"]["anyOf"][0]
    for mapping in (matrices, final_metrics):
        assert mapping["patternProperties"] and mapping["additionalProperties"] is False


def test_writes_need_the_admin_token_and_a_tracked_run(client: TestClient, create):
    body = {"id": uuid.uuid4().hex, "experiment": "x"}
    assert client.post(BASE, json=body).status_code == 401
    worker_run = create()["runs"][0]["id"]
    points = {"points": [["loss", 1, 0.0, 1.0]]}
    response = client.post(f"{BASE}/{worker_run}/metrics", json=points, headers=ADMIN)
    assert response.status_code == 409
    missing = client.post(f"{BASE}/{uuid.uuid4().hex}/metrics", json=points, headers=ADMIN)
    assert missing.status_code == 404


def test_stale_recovery_leaves_tracked_runs_alone(client: TestClient, db_url: str):
    run_id = new_run(client, f"stale {uuid.uuid4().hex[:6]}")["run_id"]
    with session_scope(db_url) as session:
        assert run_id not in stale_runs(session, timeout_s=0.0)
        assert run_id not in requeue_stale(session, timeout_s=0.0)
    assert client.get(f"/api/runs/{run_id}", headers=ADMIN).json()["status"] == "running"


def test_a_tracked_experiment_reads_like_any_other(client: TestClient):
    """Every page's data, the report and a clone attempt answer without a server error."""
    created = new_run(client, f"pages {uuid.uuid4().hex[:6]}", config={"optimizer": "adam"})
    run_id, experiment_id = created["run_id"], created["experiment_id"]
    points = [["train_loss", step, 0.1 * step, 1.0 / (step + 1)] for step in range(20)]
    client.post(f"{BASE}/{run_id}/metrics", json={"points": points}, headers=ADMIN)
    snapshot = {"step": 5, "blocks": [[0, 4]], "matrices": {"exact": matrix(np.eye(4))}}
    client.post(f"{BASE}/{run_id}/snapshots", json=snapshot, headers=ADMIN)
    client.post(f"{BASE}/{run_id}/end", json={}, headers=ADMIN)
    for path in (
        f"/api/experiments/{experiment_id}",
        f"/api/experiments/{experiment_id}/metrics?names=train_loss",
        f"/api/experiments/{experiment_id}/aggregate?name=train_loss",
        f"/api/experiments/{experiment_id}/report",
        f"/api/runs/{run_id}/snapshots",
        "/api/experiments?name=pages",
    ):
        response = client.get(path, headers=ADMIN)
        assert response.status_code == 200, (path, response.text)
    clone = client.post(f"/api/experiments/{experiment_id}/clone", headers=ADMIN)
    assert clone.status_code == 409, clone.text
    assert "reported by scripts" in clone.json()["detail"]


def test_the_report_says_where_each_run_ran(client: TestClient):
    provenance = {
        "kfac_lab": "0.1.0",
        "git_commit": "0123456789abcdef",
        "python": "3.11.7",
        "torch": "2.13.0",
        "host": "gpu-box-7",
        "device": "cuda:0",
        "plugins": {},
    }
    created = new_run(client, f"report {uuid.uuid4().hex[:6]}", provenance=provenance)
    run = client.get(f"/api/runs/{created['run_id']}", headers=ADMIN).json()
    assert run["provenance"] == provenance
    report = client.get(f"/api/experiments/{created['experiment_id']}/report", headers=ADMIN)
    assert "gpu-box-7 · cuda:0 · kfac-lab 0.1.0 (git 0123456789ab) · torch 2.13.0" in report.text
