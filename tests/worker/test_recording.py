"""StoreRecorder and RunMonitor against a real SQLite store, with the database made to fail."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from backend.store.db import session_scope
from backend.store.models import Snapshot
from backend.store.writes import claim_run, request_cancel, set_status
from tests.worker.labs import Lab, lab, run_spec, wait_for
from worker import recording
from worker.recording import RunMonitor, StopReason, StoreRecorder


@pytest.fixture
def store(tmp_path) -> Iterator[Lab]:
    with lab(tmp_path) as the_lab:
        yield the_lab


@pytest.fixture
def run_id(store: Lab) -> str:
    (run_id,) = store.create(run_spec())
    with session_scope(store.url) as session:
        claim_run(session, run_id, "me")
    return run_id


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(recording, "RETRY_FIRST_S", 0.01)


def failing(monkeypatch, name: str, failures: int, error: Exception) -> list[int]:
    """Make `recording.<name>` raise `error` on its first `failures` calls; returns a counter."""
    real, calls = getattr(recording, name), [0]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= failures:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(recording, name, flaky)
    return calls


OUTAGE = OperationalError("INSERT ...", {}, Exception("server closed the connection"))


def test_points_written_during_an_outage_are_kept(store, run_id, monkeypatch, fast_retries):
    """The database fails until the test mends it (not for a number of calls, which a loaded
    machine could retry through before `sync` looks)."""
    real, calls, down = recording.write_metrics, [0], [True]

    def flaky(*args, **kwargs):
        calls[0] += 1
        if down[0]:
            raise OUTAGE
        return real(*args, **kwargs)

    monkeypatch.setattr(recording, "write_metrics", flaky)
    recorder = StoreRecorder(run_id, store.url)
    recorder.metrics([("train_loss", 1, 0.1, 2.0)])
    wait_for(lambda: calls[0] >= 3, 60, "three failed writes")
    assert recorder.sync(timeout=0.001) is False  # the caller skips its checkpoint
    for step in range(2, 11):
        recorder.metrics([("train_loss", step, 0.1 * step, 2.0 / step)])
    down[0] = False
    assert recorder.close(timeout=60)
    assert [step for step, _ in store.points(run_id)] == list(range(1, 11))


def test_sync_waits_until_everything_is_stored(store, run_id):
    recorder = StoreRecorder(run_id, store.url)
    recorder.metrics([("train_loss", step, 0.0, 1.0) for step in range(1, 1001)])
    assert recorder.sync()
    assert len(store.points(run_id)) == 1000
    assert recorder.close(timeout=60)


def test_a_permanent_error_drops_that_record_only(store, run_id, monkeypatch, fast_retries):
    failing(monkeypatch, "write_snapshot", 10, ValueError("not a matrix"))
    recorder = StoreRecorder(run_id, store.url)
    recorder.snapshot(5, {"matrices": {"exact": np.eye(2)}, "blocks": [[0, 2]]})
    recorder.metrics([("train_loss", 5, 0.5, 1.0)])
    assert recorder.close(timeout=60)
    assert store.points(run_id) == [(5, 1.0)]
    with session_scope(store.url) as session:
        assert session.query(Snapshot).filter_by(run_id=run_id).count() == 0


def test_the_monitor_sees_a_cancel(store, run_id):
    with RunMonitor(run_id, "me", store.url, heartbeat_interval=0.2) as monitor:
        monitor.step = 7
        wait_for(lambda: store.run(run_id).step == 7, 60, "the heartbeat to carry the step")
        assert not monitor.should_stop()
        with session_scope(store.url) as session:
            request_cancel(session, run_id)
        # Seen at the next poll (well under a second on an idle machine); the generous limit
        # only ends a broken test, so that the outcome does not depend on the machine's load.
        wait_for(monitor.should_stop, 60, "the monitor to see the cancel")
    assert monitor.reason is StopReason.CANCEL


def test_the_monitor_notices_a_run_it_lost(store, run_id):
    with session_scope(store.url) as session:  # re-queued, then claimed by another worker
        set_status(session, run_id, "queued")
    with session_scope(store.url) as session:
        claim_run(session, run_id, "someone else")
    with RunMonitor(run_id, "me", store.url, heartbeat_interval=0.1) as monitor:
        wait_for(monitor.should_stop, 60, "the monitor to notice the lost run")
    assert monitor.reason is StopReason.LOST


def test_the_monitor_relays_a_worker_shutdown(store, run_id, caplog):
    """...and the run's log says why and what happens."""
    caplog.set_level(logging.INFO, logger="worker.recording")
    why: list[str | None] = [None]
    with RunMonitor(run_id, "me", store.url, 1.0, shutting_down=lambda: why[0]) as monitor:
        assert not monitor.should_stop()
        why[0] = "this worker is shutting down"
        assert monitor.should_stop() and monitor.reason is StopReason.SHUTDOWN
    told = f"run {run_id}: this worker is shutting down: the run goes back to the queue"
    assert told in caplog.messages
