"""The recovery pass: stale runs are re-queued and sent again, lost messages are re-sent."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend.store.db import session_scope
from backend.store.models import Run, utcnow
from backend.store.tracking import start_run
from backend.store.writes import claim_run
from tests.worker.labs import Lab, lab, run_spec
from worker import recovery


@pytest.fixture
def embedded(tmp_path) -> Iterator[Lab]:
    """A store and a filesystem broker, no worker: messages stay in the queue."""
    with lab(tmp_path, KFAC_HEARTBEAT_TIMEOUT_S="5") as the_lab:
        yield the_lab


def age(the_lab: Lab, run_id: str, seconds: float, **columns: bool) -> None:
    """Move a run's timestamps `seconds` into the past (heartbeat and/or creation)."""
    past = utcnow() - timedelta(seconds=seconds)
    values = {name: past for name, chosen in columns.items() if chosen}
    with session_scope(the_lab.url) as session:
        session.execute(update(Run.__table__).where(Run.id == run_id).values(**values))


def depth(the_lab: Lab) -> int:
    return recovery.queue_depths(["cpu"])["cpu"]


def test_a_run_whose_worker_died_is_requeued_and_sent(embedded):
    stale, alive = embedded.create(run_spec(), run_spec())
    with session_scope(embedded.url) as session:
        claim_run(session, stale, "dead worker")
        claim_run(session, alive, "live worker")
    age(embedded, stale, 60, heartbeat_at=True)

    assert recovery.requeue_stale_runs(embedded.settings) == [stale]
    run = embedded.run(stale)
    assert (run.status, run.attempts) == ("queued", 1) and run.celery_task_id
    assert embedded.run(alive).status == "running"
    assert depth(embedded) == 1
    assert recovery.requeue_stale_runs(embedded.settings) == []  # nothing more to do


def test_a_queued_run_whose_message_was_lost_is_sent_again(embedded):
    lost, young = embedded.create(run_spec(), run_spec())
    age(embedded, lost, 60, created_at=True)  # queued a minute ago, never sent

    assert recovery.requeue_stale_runs(embedded.settings) == [lost]
    assert depth(embedded) == 1
    # The queue now holds as many messages as there are runs waiting long: nothing more.
    age(embedded, young, 60, created_at=True)
    assert recovery.requeue_stale_runs(embedded.settings) == [young]
    assert recovery.requeue_stale_runs(embedded.settings) == []
    assert depth(embedded) == 2


def test_runs_waiting_in_the_queue_are_not_sent_twice(embedded):
    waiting = embedded.create(run_spec(), run_spec())
    embedded.send(*waiting)
    for run_id in waiting:
        age(embedded, run_id, 600, created_at=True)
    assert recovery.requeue_stale_runs(embedded.settings) == []
    assert depth(embedded) == 2


def test_a_tracked_run_whose_script_went_silent_is_failed_not_requeued(tmp_path):
    with lab(tmp_path, KFAC_HEARTBEAT_TIMEOUT_S="5", KFAC_TRACKING_TIMEOUT_S="90") as the_lab:
        with session_scope(the_lab.url) as session:
            silent, talking = (
                start_run(
                    session,
                    run_id=uuid.uuid4().hex,
                    experiment="scripts",
                    label=label,
                    config={},
                    optimizer={"name": "custom"},
                    seed=0,
                    client="laptop:1",
                )[0].id
                for label in ("silent", "talking")
            )
        age(the_lab, silent, 95, heartbeat_at=True)  # beyond 90 s, though not for workers' 5 s
        age(the_lab, talking, 85, heartbeat_at=True)

        assert recovery.requeue_stale_runs(the_lab.settings) == []  # nothing to send
        run = the_lab.run(silent)
        assert (run.status, run.error) == ("failed", "no contact from the script for 90 s")
        assert run.finished_at is not None
        assert the_lab.run(talking).status == "running"


@pytest.mark.slow
def test_a_worker_fails_a_silent_tracked_run_with_nobody_watching(tmp_path):
    """No page open, no call from the test: the worker's own periodic recovery pass does it."""
    with lab(tmp_path, KFAC_HEARTBEAT_TIMEOUT_S="4", KFAC_TRACKING_TIMEOUT_S="3") as the_lab:
        the_lab.start_worker()
        with session_scope(the_lab.url) as session:
            run_id = start_run(
                session,
                run_id=uuid.uuid4().hex,
                experiment="unwatched",
                label="died",
                config={},
                optimizer={"name": "custom"},
                seed=0,
                client="laptop:2",
            )[0].id
        (failed,) = the_lab.wait(run_id, timeout=120)
        assert (failed.status, failed.error) == ("failed", "no contact from the script for 3 s")
