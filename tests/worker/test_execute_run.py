"""`execute_run` in this process (no Celery): the task's decisions, one by one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backend.store.db import session_scope
from backend.store.writes import claim_run, set_status
from tests.worker.labs import Lab, lab, run_spec
from worker import training
from worker.checkpoints import checkpoint_path
from worker.tasks import HANDED_BACK, execute_run


@pytest.fixture
def store(tmp_path, monkeypatch) -> Iterator[Lab]:
    monkeypatch.setattr(training, "STOP_CHECK_SECONDS", 0.0)
    with lab(tmp_path, KFAC_HEARTBEAT_TIMEOUT_S="2") as the_lab:
        yield the_lab


def test_a_run_is_trained_once(store):
    (run_id,) = store.create(run_spec())
    assert execute_run(run_id, store.settings, worker_id="w") == "succeeded"
    assert execute_run(run_id, store.settings, worker_id="w") == "already succeeded"
    assert store.run(run_id).attempts == 1
    assert execute_run("no-such-run", store.settings, worker_id="w") == "no such run"


def test_a_run_another_worker_trains_is_left_alone(store):
    (run_id,) = store.create(run_spec())
    with session_scope(store.url) as session:
        claim_run(session, run_id, "other")
    assert execute_run(run_id, store.settings, worker_id="w") == "running, not claimable"
    assert store.run(run_id).worker_id == "other"


def test_an_invalid_spec_fails_the_run(store):
    (run_id,) = store.create(run_spec())
    with session_scope(store.url) as session:
        run = store.run(run_id)
        session.merge(run).spec = {**run.spec, "steps": -1}
    assert execute_run(run_id, store.settings, worker_id="w") == "failed"
    run = store.run(run_id)
    assert run.status == "failed" and "invalid run spec" in run.error and "steps" in run.error


def test_a_worker_shutdown_hands_the_run_back(store):
    (run_id,) = store.create(run_spec(steps=100_000, checkpoint_interval=50))
    checkpoint = checkpoint_path(store.settings.artifacts_dir / run_id, 50)
    assert execute_run(run_id, store.settings, worker_id="w", stopping=checkpoint.exists) == (
        HANDED_BACK
    )
    run = store.run(run_id)
    assert (run.status, run.attempts, run.error) == ("queued", 0, None)
    assert checkpoint.exists()  # the next worker resumes from it
    # A message taken while the worker is stopping is handed back without a claim.
    assert execute_run(run_id, store.settings, worker_id="w", stopping=lambda: True) == HANDED_BACK
    assert store.run(run_id).status == "queued"


def test_a_run_taken_over_meanwhile_is_not_overwritten(store):
    """The worker stalled past the timeout; the run was re-queued and claimed elsewhere."""
    (run_id,) = store.create(run_spec(steps=100_000))

    def taken_over() -> bool:
        run = store.run(run_id)
        if run.status == "running" and run.worker_id == "w" and run.step > 0:
            with session_scope(store.url) as session:
                set_status(session, run_id, "queued")
            with session_scope(store.url) as session:
                claim_run(session, run_id, "other")
        return False

    assert execute_run(run_id, store.settings, worker_id="w", stopping=taken_over) == "lost"
    run = store.run(run_id)
    assert (run.status, run.worker_id) == ("running", "other")


def test_a_run_records_where_it_ran(store):
    (run_id,) = store.create(run_spec(steps=2))
    assert execute_run(run_id, store.settings, worker_id="w") == "succeeded"
    provenance = store.run(run_id).provenance
    assert provenance["device"] == "cpu" and provenance["python"] and provenance["torch"]
    assert provenance["kfac_lab"] and provenance["host"]
