"""Run logs through the API: a run's lines after a seq (admin, or a share token of its own
experiment only; another experiment's run answers as a missing one), and a tracked run's lines
sent by its script (validated, idempotent, refused for a worker's run)."""

from __future__ import annotations

import uuid

from backend.store.db import session_scope
from backend.store.run_logs import write_log_lines
from tests.api.conftest import ADMIN
from tests.api.test_api_scoping import MISSING_RUN, share


def test_a_run_s_lines_after_a_seq_for_its_readers_only(client, create, db_url):
    mine, other = create(), create()
    run_id, other_run = mine["runs"][0]["id"], other["runs"][0]["id"]
    with session_scope(db_url) as session:
        write_log_lines(session, run_id, [(i, 1.7e9 + i, "INFO", f"<script>{i}") for i in range(3)])
        write_log_lines(session, other_run, [(0, 1.7e9, "INFO", "secret")])
    answer = client.get(f"/api/runs/{run_id}/logs", headers=ADMIN)
    assert answer.status_code == 200
    assert [line["message"] for line in answer.json()["lines"]] == [
        "<script>0",
        "<script>1",
        "<script>2",
    ]
    later = client.get(f"/api/runs/{run_id}/logs", params={"after": 1}, headers=ADMIN).json()
    assert [line["seq"] for line in later["lines"]] == [2] and later["run_id"] == run_id

    token = share(client, mine)
    assert len(client.get(f"/api/runs/{run_id}/logs", headers=token).json()["lines"]) == 3
    foreign = client.get(f"/api/runs/{other_run}/logs", headers=token)
    missing = client.get(f"/api/runs/{MISSING_RUN}/logs", headers=token)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()
    bad = client.get(f"/api/runs/{run_id}/logs", params={"after": "x"}, headers=ADMIN)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "after"]


def test_a_tracked_script_sends_lines(client, create):
    body = {"id": uuid.uuid4().hex, "experiment": "logs from a script"}
    run = client.post("/api/tracking/runs", json=body, headers=ADMIN).json()
    path = f"/api/tracking/runs/{run['run_id']}/logs"
    batch = {"lines": [[0, 1.7e9, "INFO", "epoch 1"], [1, 1.7e9 + 1, "WARNING", "slow"]]}
    assert client.post(path, json=batch, headers=ADMIN).json() == {"stored": 2}
    assert client.post(path, json=batch, headers=ADMIN).json() == {"stored": 0}  # a retry
    lines = client.get(f"/api/runs/{run['run_id']}/logs", headers=ADMIN).json()["lines"]
    assert [(line["level"], line["message"]) for line in lines] == [
        ("INFO", "epoch 1"),
        ("WARNING", "slow"),
    ]
    for bad, field in (
        ({"lines": [[-1, 1.7e9, "INFO", "x"]]}, ["body", "lines", 0, 0]),
        ({"lines": [[0, float("nan"), "INFO", "x"]]}, None),
        ({"lines": [[0, 1.7e9, "info <b>", "x"]]}, ["body", "lines", 0, 2]),
        ({"lines": [[0, 1.7e9, "INFO", "x" * 20_001]]}, ["body", "lines", 0, 3]),
        ({"lines": [], "extra": 1}, ["body", "extra"]),
    ):
        if field is None:  # NaN is not JSON: sent as the text a client might produce
            response = client.post(
                path,
                content='{"lines": [[0, NaN, "INFO", "x"]]}',
                headers={**ADMIN, "Content-Type": "application/json"},
            )
        else:
            response = client.post(path, json=bad, headers=ADMIN)
        assert response.status_code == 422, (bad, response.text)
        if field is not None:
            assert response.json()["detail"][0]["loc"] == field
    worker_run = create()["runs"][0]["id"]
    refused = client.post(f"/api/tracking/runs/{worker_run}/logs", json=batch, headers=ADMIN)
    assert refused.status_code == 409
    missing = client.post(f"/api/tracking/runs/{MISSING_RUN}/logs", json=batch, headers=ADMIN)
    assert missing.status_code == 404
    assert client.post(path, json=batch).status_code == 401
