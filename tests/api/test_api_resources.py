"""A run must fit the worker: the API refuses what would exceed its memory or time limit
(422 naming the run, with the estimate and the limit) and shows the estimate of what it takes."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.settings import Settings
from backend.store.db import session_scope
from backend.store.queueing import beat_worker, forget_worker
from tests.api.conftest import ADMIN, ADMIN_TOKEN, SMALL_SPEC, FakeBroker

MEMORY_LIMIT = 2 * 10**9
TIME_LIMIT_S = 3600.0

# A conv net with 256 channels at a batch of 4000 on 28×28 images: GBs of activations.
HUGE_CONV = {
    "dataset": "digits_offline",
    "model": {"name": "convnet", "channels": [256, 32], "pooling": ["max", "max"]},
    "optimizer": {"name": "sgd"},
    "batch_size": 4000,
    "steps": 10,
}
# 100,000 K-FAC steps of a 4000-wide MLP: days of compute, little memory.
LONG_KFAC = {
    "dataset": "synthetic",
    "model": {"name": "mlp", "hidden": [4000]},
    "batch_size": 32,
    "steps": 100_000,
    "eval_interval": None,
}


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path,
        database_url=db_url,
        admin_token=ADMIN_TOKEN,
        worker_memory_bytes=MEMORY_LIMIT,
        run_time_limit_s=TIME_LIMIT_S,
        worker_flops=2e10,
    )


def errors_of(response) -> dict[str, str]:
    assert response.status_code == 422, response.text
    return {".".join(map(str, e["loc"])): e["msg"] for e in response.json()["detail"]}


def test_a_run_too_big_for_the_worker_is_refused_with_its_estimate(
    client: TestClient, broker: FakeBroker
) -> None:
    small = SMALL_SPEC["base"]
    body = {"name": "too big", "runs": [small, HUGE_CONV]}
    errors = errors_of(client.post("/api/experiments", json=body, headers=ADMIN))
    assert list(errors) == ["body.runs.1"]
    message = errors["body.runs.1"]
    assert "GB of memory" in message and "2 GB" in message, message
    assert "KFAC_WORKER_MEMORY_BYTES" in message
    assert broker.sent == []


def test_a_run_too_long_is_refused_where_the_comparison_names_it(
    client: TestClient, broker: FakeBroker
) -> None:
    body = {
        "base": LONG_KFAC,
        "optimizers": [{"name": "sgd"}, {"name": "kfac"}],
        "seeds": [0, 1],
    }
    errors = errors_of(client.post("/api/experiments", json=body, headers=ADMIN))
    # the two K-FAC runs (its inverses of 4001² factors) exceed the hour; SGD does not
    assert list(errors) == ["body.optimizers.1"], errors
    assert "100,000 steps" in errors["body.optimizers.1"]
    assert (
        "1 h" in errors["body.optimizers.1"]
        and "KFAC_RUN_TIME_LIMIT_S" in errors["body.optimizers.1"]
    )
    one = {"base": LONG_KFAC}
    assert list(errors_of(client.post("/api/experiments", json=one, headers=ADMIN))) == [
        "body.base"
    ]
    preset = {"preset": "smoke", "overrides": {"steps": 100_000, "snapshot_interval": 1000}}
    errors = errors_of(client.post("/api/experiments", json=preset, headers=ADMIN))
    assert list(errors) == ["body.overrides"], errors
    assert broker.sent == []


def test_every_run_shows_its_estimate(client: TestClient, broker: FakeBroker) -> None:
    created = client.post("/api/experiments", json=SMALL_SPEC, headers=ADMIN)
    assert created.status_code == 201, created.text
    runs = created.json()["runs"]
    by_name = {run["optimizer"]["name"]: run["estimate"] for run in runs}
    assert all(e["memory_bytes"] > 0 and e["step_seconds"] > 0 for e in by_name.values())
    assert by_name["kfac"]["memory_bytes"] > by_name["sgd_momentum"]["memory_bytes"]
    assert by_name["kfac"]["run_seconds"] == pytest.approx(20 * by_name["kfac"]["step_seconds"])
    run = client.get(f"/api/runs/{runs[0]['id']}", headers=ADMIN).json()
    assert run["estimate"] == runs[0]["estimate"]


def test_a_run_on_a_queue_nobody_consumes_says_so(
    client: TestClient, broker: FakeBroker, db_url: str
) -> None:
    body = {"runs": [{**SMALL_SPEC["base"], "device": "cuda", "queue_timeout_s": 600}]}
    created = client.post("/api/experiments", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    experiment = created.json()
    run_id = experiment["runs"][0]["id"]
    waiting = "waiting for a worker on queue gpu; fails after 600 s"
    assert experiment["runs"][0]["status_detail"] == waiting
    assert client.get(f"/api/runs/{run_id}", headers=ADMIN).json()["status_detail"] == waiting
    with session_scope(db_url) as session:
        beat_worker(session, "gpu-box:1", ["gpu"])
    try:
        experiment = client.get(f"/api/experiments/{experiment['id']}", headers=ADMIN).json()
        assert experiment["runs"][0]["status_detail"] is None
        listed = client.get("/api/experiments", headers=ADMIN).json()["items"]
        (mine,) = [e for e in listed if e["id"] == experiment["id"]]
        assert mine["runs"][0]["status_detail"] is None
    finally:
        with session_scope(db_url) as session:
            forget_worker(session, "gpu-box:1")
