"""The worker registry and the queued runs' side of the store (backend/store/queueing.py)."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest

from backend.store import queueing
from backend.store.db import session_scope
from backend.store.models import Run, utcnow
from backend.store.queueing import (
    beat_worker,
    forget_worker,
    live_queues,
    move_to_cpu,
    status_detail,
)
from backend.store.writes import claim_run, fail_queued


def test_live_queues_are_those_of_workers_beating_within_the_timeout(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu, cpu = f"gpu-{uuid4().hex}", f"cpu-{uuid4().hex}"  # other tests share the database
    an_hour_ago = utcnow() - timedelta(hours=1)
    with monkeypatch.context() as past:  # the beats of an hour ago, whatever the machine's pace
        past.setattr(queueing, "utcnow", lambda: an_hour_ago)
        with session_scope(db_url) as session:
            beat_worker(session, f"{gpu}:1", [gpu, cpu])
            beat_worker(session, f"{cpu}:2", [cpu])
    with session_scope(db_url) as session:
        assert {gpu, cpu} <= live_queues(session, 2 * 3600)
        assert not {gpu, cpu} & live_queues(session, 60)
    with session_scope(db_url) as session:
        beat_worker(session, f"{cpu}:2", [cpu])  # renewing updates the same entry
    with session_scope(db_url) as session:
        live = live_queues(session, 60)
        assert cpu in live and gpu not in live  # the first worker went silent
        forget_worker(session, f"{cpu}:2")
        forget_worker(session, f"{gpu}:1")
    with session_scope(db_url) as session:
        assert not {gpu, cpu} & live_queues(session, 60)


def test_status_detail_says_what_a_queued_run_waits_for() -> None:
    cuda = {"device": "cuda"}
    assert status_detail("queued", cuda, {"cpu"}) == "waiting for a worker on queue gpu"
    assert status_detail("queued", cuda, {"gpu"}) is None
    assert status_detail("running", cuda, set()) is None
    assert status_detail("queued", {}, set()) == "waiting for a worker on queue cpu"
    timed = {**cuda, "queue_timeout_s": 600, "on_queue_timeout": "cpu"}
    assert status_detail("queued", timed, set()) == (
        "waiting for a worker on queue gpu; moves to queue cpu after 600 s"
    )
    failing = {**cuda, "queue_timeout_s": 30.0}
    assert status_detail("queued", failing, set()).endswith("; fails after 30 s")


def test_a_queued_run_can_be_failed_or_moved_to_the_cpu_only_while_queued(
    db_url: str, make_experiment
) -> None:
    _, (first, second) = make_experiment(2)
    with session_scope(db_url) as session:
        session.get(Run, first).spec = {"device": "cuda", "steps": 5}
    with session_scope(db_url) as session:
        assert move_to_cpu(session, first)
        assert fail_queued(session, second, "nobody came")
    with session_scope(db_url) as session:
        moved, failed = session.get(Run, first), session.get(Run, second)
        assert moved.spec == {"device": "cpu", "steps": 5} and moved.status == "queued"
        assert (failed.status, failed.error) == ("failed", "nobody came")
        assert failed.finished_at is not None
        assert not fail_queued(session, second, "again")
        assert claim_run(session, first, "w") is not None
        assert not move_to_cpu(session, first) and not fail_queued(session, first, "late")
