"""Run life cycle: claims, heartbeats, outcomes, cancellation, lost workers; the event log;
share links and the admin token."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import update

from backend.store.access import (
    ShareUse,
    create_share_link,
    get_or_create_admin_token,
    revoke_share_link,
    revoke_share_links,
    share_links,
    use_share_token,
)
from backend.store.db import session_scope
from backend.store.listing import list_experiments
from backend.store.models import Run, experiment_status, utcnow
from backend.store.queries import (
    events_after,
    get_experiment,
    get_run,
    last_event_id,
)
from backend.store.writes import (
    Control,
    cancel_experiment,
    claim_run,
    delete_experiment,
    heartbeat,
    is_cancel_requested,
    request_cancel,
    requeue_stale,
    set_status,
    stale_runs,
)

MakeExperiment = Callable[..., tuple[str, list[str]]]


def test_a_run_from_claim_to_success(db_url: str, make_experiment: MakeExperiment) -> None:
    experiment_id, (run_id, other_id) = make_experiment(n_runs=2)
    with session_scope(db_url) as session:
        run = claim_run(session, run_id, "worker-a")
        assert run is not None and run.status == "running" and run.attempts == 1
        assert run.started_at is not None and run.started_at.tzinfo is not None
    with session_scope(db_url) as session:
        assert claim_run(session, run_id, "worker-b") is None  # owned by a live worker
        assert heartbeat(session, run_id, 5, "worker-a") is Control.CONTINUE
        assert heartbeat(session, run_id, 6, "worker-b") is Control.LOST
        assert set_status(session, run_id, "succeeded", step=100, final_metrics={"loss": 0.1})
        assert not set_status(session, run_id, "failed")  # finished runs stay finished
        assert heartbeat(session, run_id, 7, "worker-a") is Control.LOST
        assert get_experiment(session, experiment_id).status == "running"
        assert request_cancel(session, other_id) == "cancelled"  # queued: cancelled at once
        experiment = get_experiment(session, experiment_id)
        events = events_after(session, experiment_id)

    assert experiment.status == "cancelled"
    assert [r.status for r in experiment.runs] == ["succeeded", "cancelled"]
    assert experiment.runs[0].step == 100 and experiment.runs[0].final_metrics == {"loss": 0.1}
    statuses = [(e.payload["run_id"], e.payload["status"]) for e in events]
    assert statuses == [(run_id, "running"), (run_id, "succeeded"), (other_id, "cancelled")]
    assert events[-1].payload["experiment_status"] == "cancelled"


def test_cancelling_a_running_run_reaches_its_worker(db_url: str, make_experiment: MakeExperiment):
    experiment_id, run_ids = make_experiment(n_runs=3)
    with session_scope(db_url) as session:
        claim_run(session, run_ids[0], "w")
        set_status(session, run_ids[2], "diverged", step=3, error="loss is NaN")
        assert sorted(cancel_experiment(session, experiment_id)) == sorted(run_ids[:2])
        assert is_cancel_requested(session, run_ids[0])
        assert heartbeat(session, run_ids[0], 10, "w") is Control.CANCEL
        assert get_run(session, run_ids[1]).status == "cancelled"
        assert set_status(session, run_ids[0], "cancelled", step=10)
        assert get_experiment(session, experiment_id).status == "cancelled"
        assert get_run(session, run_ids[2]).error == "loss is NaN"


def test_stale_runs_are_requeued_then_failed(db_url: str, make_experiment: MakeExperiment):
    _, (run_id,) = make_experiment()

    def go_stale(session) -> None:
        long_ago = utcnow() - timedelta(seconds=120)
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=long_ago))

    with session_scope(db_url) as session:
        claim_run(session, run_id, "dead-worker")
        assert run_id not in stale_runs(session, timeout_s=60)
        go_stale(session)
        assert run_id in stale_runs(session, timeout_s=60)
        assert run_id in requeue_stale(session, timeout_s=60)
        assert get_run(session, run_id).status == "queued"
        # the next worker takes it over; then it dies too, until attempts run out
        for attempt in (2, 3):
            assert claim_run(session, run_id, f"worker-{attempt}").attempts == attempt
            go_stale(session)
            requeued = requeue_stale(session, timeout_s=60, max_attempts=3)
            assert (run_id in requeued) == (attempt < 3)
        run = get_run(session, run_id)
        session.refresh(run)
        assert run.status == "failed" and "worker lost" in run.error


def test_a_stale_run_being_cancelled_ends_cancelled(db_url: str, make_experiment):
    experiment_id, (run_id,) = make_experiment()
    with session_scope(db_url) as session:
        claim_run(session, run_id, "w")
        assert request_cancel(session, run_id) == "running"
        long_ago = utcnow() - timedelta(seconds=120)
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=long_ago))
        assert requeue_stale(session, timeout_s=60) == []
        run = get_run(session, run_id)
        session.refresh(run)
        assert run.status == "cancelled" and run.finished_at is not None
        assert get_experiment(session, experiment_id).status == "cancelled"


def test_a_stale_run_can_be_taken_over_directly(db_url: str, make_experiment: MakeExperiment):
    _, (run_id,) = make_experiment()
    with session_scope(db_url) as session:
        claim_run(session, run_id, "a")
        long_ago = utcnow() - timedelta(seconds=120)
        session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=long_ago))
        assert claim_run(session, run_id, "b", stale_after_s=60).worker_id == "b"


def test_concurrent_outcomes_leave_a_consistent_experiment(db_url: str, make_experiment):
    """Workers finishing runs while the API cancels the experiment: no deadlock, no lost
    update; the experiment's status is the one its runs imply, and every change is logged."""
    experiment_id, run_ids = make_experiment(n_runs=6)
    with session_scope(db_url) as session:
        for run_id in run_ids[:4]:
            claim_run(session, run_id, "w")
    barrier = threading.Barrier(len(run_ids) + 1)

    def finish(run_id: str) -> None:
        barrier.wait()
        with session_scope(db_url) as session:
            set_status(session, run_id, "succeeded", step=10)

    def cancel() -> None:
        barrier.wait()
        with session_scope(db_url) as session:
            cancel_experiment(session, experiment_id)

    with ThreadPoolExecutor(max_workers=len(run_ids) + 1) as pool:
        futures = [pool.submit(finish, run_id) for run_id in run_ids] + [pool.submit(cancel)]
        for future in futures:
            future.result()
    with session_scope(db_url) as session:
        experiment = get_experiment(session, experiment_id)
        events = events_after(session, experiment_id)
    statuses = [run.status for run in experiment.runs]
    assert all(status in ("succeeded", "cancelled") for status in statuses)
    assert experiment.status == experiment_status(statuses)
    assert events[-1].payload["experiment_status"] == experiment.status
    assert len(events) == 4 + len(run_ids)  # 4 claims, then one outcome per run


def test_event_ids_increase_and_resume_exactly(db_url: str, make_experiment: MakeExperiment):
    experiment_id, run_ids = make_experiment(n_runs=4)
    with session_scope(db_url) as session:
        for run_id in run_ids:
            claim_run(session, run_id, "w")
    with session_scope(db_url) as session:
        first = events_after(session, experiment_id, limit=2)
        rest = events_after(session, experiment_id, last_id=first[-1].id)
        assert last_event_id(session, experiment_id) == rest[-1].id
    ids = [e.id for e in first + rest]
    assert ids == sorted(set(ids)) and len(ids) == 4
    assert [e.payload["run_id"] for e in first + rest] == run_ids


def test_list_and_delete_experiments(db_url: str, make_experiment: MakeExperiment) -> None:
    keep, _ = make_experiment(name="Keep 100%_match")
    gone, (run_id,) = make_experiment(name="to delete")
    with session_scope(db_url) as session:
        page, total = list_experiments(session, name="100%_MATCH")
        assert [e.id for e in page] == [keep] and total == 1
        queued, _ = list_experiments(session, status="queued", limit=1000)
        assert {keep, gone} <= {e.id for e in queued}
        assert delete_experiment(session, gone)
        assert not delete_experiment(session, gone)
    with session_scope(db_url) as session:
        assert get_run(session, run_id) is None


def test_share_links_open_one_experiment_until_revoked(db_url: str, make_experiment):
    experiment_id, _ = make_experiment()
    with session_scope(db_url) as session:
        token = create_share_link(session, experiment_id)
        second = create_share_link(session, experiment_id)
        assert token != second and len(token) >= 22
        assert use_share_token(session, token) == ShareUse(experiment_id)
        assert use_share_token(session, token + "x") == ShareUse(None, revoked=False)
        assert revoke_share_links(session, experiment_id) == 2
        assert use_share_token(session, token) == ShareUse(None, revoked=True)


def test_share_links_are_listed_with_their_last_use_and_revoked_one_by_one(
    db_url: str, make_experiment
):
    experiment_id, _ = make_experiment()
    other_id, _ = make_experiment()
    with session_scope(db_url) as session:
        first = create_share_link(session, experiment_id)
        second = create_share_link(session, experiment_id)
        create_share_link(session, other_id)
    with session_scope(db_url) as session:
        links = share_links(session, experiment_id)
        assert len(links) == 2 and all(link.last_used_at is None for link in links)
        assert use_share_token(session, second).experiment_id == experiment_id
    with session_scope(db_url) as session:
        newest, oldest = share_links(session, experiment_id)
        assert newest.last_used_at is not None and oldest.last_used_at is None
        used = newest.last_used_at
        use_share_token(session, second)  # within the minute: not written again
        assert newest.last_used_at == used
        other_link = share_links(session, other_id)[0]
        assert not revoke_share_link(session, experiment_id, other_link.id)  # not this one's
        assert revoke_share_link(session, experiment_id, newest.id)
        assert not revoke_share_link(session, experiment_id, newest.id)  # already revoked
    with session_scope(db_url) as session:
        assert use_share_token(session, second) == ShareUse(None, revoked=True)
        assert use_share_token(session, first) == ShareUse(experiment_id)
        assert use_share_token(session, first).experiment_id == experiment_id


def test_admin_token_is_generated_once(db_url: str) -> None:
    with session_scope(db_url) as session:
        token = get_or_create_admin_token(session)
    with session_scope(db_url) as session:
        assert get_or_create_admin_token(session) == token


def test_experiment_status_rules() -> None:
    assert experiment_status([]) == "queued"
    assert experiment_status(["queued", "queued"]) == "queued"
    assert experiment_status(["queued", "succeeded"]) == "running"
    assert experiment_status(["succeeded", "diverged"]) == "succeeded"
    assert experiment_status(["succeeded", "cancelled"]) == "cancelled"
    assert experiment_status(["failed", "cancelled"]) == "failed"
