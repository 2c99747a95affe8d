"""Liveness of tracked runs: every write of a script and its client's heartbeat renew the
run; a run not heard from for the tracking timeout is failed with the reason (and a status
event for open pages); a script that comes back afterwards is answered 409."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from backend.store.db import session_scope
from backend.store.models import Run, utcnow
from backend.store.queries import events_after
from backend.store.writes import fail_silent_tracked
from tests.api.conftest import ADMIN
from tests.api.test_api_tracking import BASE, new_run

TIMEOUT_S = 300.0
REASON = "no contact from the script for 300 s"
WRITES = {
    "heartbeat": {},
    "metrics": {"points": [["train_loss", 7, 1.0, 0.5]]},
    "logs": {"lines": [[0, 1.7e9, "INFO", "still here"]]},
}


def silent_for(db_url: str, run_id: str, seconds: float) -> None:
    """The script was last heard from `seconds` ago."""
    with session_scope(db_url) as session:
        session.execute(
            update(Run.__table__)
            .where(Run.id == run_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def reap(db_url: str, now_plus_s: float = 0.0) -> list[str]:
    """The recovery pass's rule, with the clock moved `now_plus_s` seconds ahead."""
    with session_scope(db_url) as session:
        return fail_silent_tracked(session, TIMEOUT_S, now=utcnow() + timedelta(seconds=now_plus_s))


def test_the_start_tells_the_client_how_long_the_server_waits(client: TestClient):
    created = new_run(client, f"liveness {uuid.uuid4().hex[:6]}")
    assert created["contact_timeout_s"] == client.app.state.settings.tracking_timeout_s


def test_a_silent_run_fails_with_the_reason_and_a_live_event(client: TestClient, db_url: str):
    created = new_run(client, f"silent {uuid.uuid4().hex[:6]}")
    run_id = created["run_id"]
    assert run_id not in reap(db_url, now_plus_s=TIMEOUT_S - 5)  # not yet
    assert run_id in reap(db_url, now_plus_s=TIMEOUT_S + 5)
    run = client.get(f"/api/runs/{run_id}", headers=ADMIN).json()
    assert (run["status"], run["error"]) == ("failed", REASON)
    experiment = client.get(f"/api/experiments/{created['experiment_id']}", headers=ADMIN).json()
    assert experiment["status"] == "failed"
    with session_scope(db_url) as session:
        last = events_after(session, created["experiment_id"], 0)[-1]
        assert (last.kind, last.payload["run_id"]) == ("status", run_id)
        assert (last.payload["status"], last.payload["error"]) == ("failed", REASON)
    assert run_id not in reap(db_url, now_plus_s=2 * TIMEOUT_S)  # failed once


@pytest.mark.parametrize("write", sorted(WRITES))
def test_every_write_renews_the_run(client: TestClient, db_url: str, write: str):
    alive, silent = (new_run(client, f"renew {uuid.uuid4().hex[:6]}")["run_id"] for _ in "ab")
    earlier = {"points": [["train_loss", 3, 0.5, 0.9]]}
    assert client.post(f"{BASE}/{alive}/metrics", json=earlier, headers=ADMIN).status_code == 200
    for run_id in (alive, silent):
        silent_for(db_url, run_id, TIMEOUT_S + 60)
    answer = client.post(f"{BASE}/{alive}/{write}", json=WRITES[write], headers=ADMIN)
    assert answer.status_code == 200, answer.text
    failed = reap(db_url)
    assert silent in failed and alive not in failed
    run = client.get(f"/api/runs/{alive}", headers=ADMIN).json()
    assert run["status"] == "running"
    assert run["step"] == (7 if write == "metrics" else 3)  # only metrics say how far it got


def test_a_heartbeat_carries_a_cancel_from_the_page(client: TestClient):
    run_id = new_run(client, f"cancel {uuid.uuid4().hex[:6]}")["run_id"]
    beat = client.post(f"{BASE}/{run_id}/heartbeat", json={}, headers=ADMIN)
    assert beat.json() == {"cancel_requested": False}
    assert client.post(f"/api/runs/{run_id}/cancel", headers=ADMIN).status_code in (200, 202)
    beat = client.post(f"{BASE}/{run_id}/heartbeat", json={}, headers=ADMIN)
    assert beat.json() == {"cancel_requested": True}


def test_a_script_that_comes_back_is_told_its_run_has_ended(client: TestClient, db_url: str):
    run_id = new_run(client, f"back {uuid.uuid4().hex[:6]}")["run_id"]
    silent_for(db_url, run_id, TIMEOUT_S + 1)
    assert run_id in reap(db_url)
    detail = f"run {run_id} has ended failed: {REASON}; it takes no more records"
    for write, body in WRITES.items():
        answer = client.post(f"{BASE}/{run_id}/{write}", json=body, headers=ADMIN)
        assert (answer.status_code, answer.json()["detail"]) == (409, detail), write
    finish = client.post(f"{BASE}/{run_id}/end", json={"status": "succeeded"}, headers=ADMIN)
    assert (finish.status_code, finish.json()["detail"]) == (409, detail)
    series = client.get(f"/api/runs/{run_id}/metrics", headers=ADMIN).json()["series"]
    assert series == {}  # nothing written after the end
    run = client.get(f"/api/runs/{run_id}", headers=ADMIN).json()
    assert (run["status"], run["error"]) == ("failed", REASON)


def test_heartbeats_of_unknown_and_worker_runs_are_refused(client: TestClient, create):
    missing = client.post(f"{BASE}/{uuid.uuid4().hex}/heartbeat", json={}, headers=ADMIN)
    assert missing.status_code == 404
    worker_run = create()["runs"][0]["id"]
    refused = client.post(f"{BASE}/{worker_run}/heartbeat", json={}, headers=ADMIN)
    assert refused.status_code == 409
    assert client.post(f"{BASE}/{uuid.uuid4().hex}/heartbeat", json={}).status_code == 401
