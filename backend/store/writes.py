"""The life cycle of experiments and runs: the API creates, cancels and deletes them; the worker
claims runs, renews heartbeats and sets the outcome. (What a run produces, metrics and
snapshots, is written by `backend.store.results`.)

Conventions, and why:

* Every function takes the caller's `Session` and never commits; the caller's
  `session_scope()` is the transaction, so a batch of writes is all-or-nothing.
* A run changes state only through a conditional UPDATE (`WHERE status IN ...`): when the API
  (cancel), a worker (finish) and a second worker (after a redelivery) act at once, the first
  wins and the others see it in the return value instead of overwriting it.
* Each change appends one event to the experiment's log, as the last statement of the
  transaction (see `append_event`), which the API's live stream reads by id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, literal, or_, select, text, true
from sqlalchemy import update as sql_update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from backend.store.base import new_id
from backend.store.models import (
    Event,
    Experiment,
    Run,
    RunStatus,
    UTCDateTime,
    experiment_status,
    utcnow,
)
from backend.store.snapshots import to_jsonable

ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


class RunNotFound(LookupError):
    """The run does not exist (any more: its experiment may have been deleted)."""


class Control(StrEnum):
    """What a running worker should do after a heartbeat."""

    CONTINUE = "continue"
    CANCEL = "cancel"  # a cancel was requested: stop and set the run `cancelled`
    LOST = "lost"  # the run is no longer this worker's (finished, re-queued or deleted): stop


# --- the event log -------------------------------------------------------------------------


def append_event(session: Session, experiment_id: str, kind: str, payload: dict) -> None:
    """Append an event; call it last in a transaction.

    SQLite has one writer at a time, so event ids follow commit order. PostgreSQL hands out ids
    when rows are inserted, and two transactions may commit in the other order: a stream that
    has read id 11 would then never see id 10. A per-experiment advisory lock, held until
    commit, makes ids of one experiment's events follow commit order there too; holding it only
    for the end of a transaction keeps writers of one experiment from queueing for long.
    """
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(
            hashlib.blake2b(experiment_id.encode(), digest_size=8).digest(), "big", signed=True
        )
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    session.execute(
        insert(Event.__table__).values(experiment_id=experiment_id, kind=kind, payload=payload)
    )


# --- experiments (API) -----------------------------------------------------------------------


def create_experiment(
    session: Session,
    *,
    name: str,
    spec: dict[str, Any],
    runs: Sequence[Mapping[str, Any]],
    preset: str | None = None,
) -> Experiment:
    """Store an experiment and its runs, all `queued`.

    Each run is a mapping of `Run` columns: `label`, `optimizer`, `seed`, `spec` and optionally
    `total_steps`, `device`, `data_source`.
    """
    experiment = Experiment(name=name, spec=spec, preset=preset, status=RunStatus.QUEUED)
    experiment.runs = [
        Run(**fields, position=position, status=RunStatus.QUEUED)
        for position, fields in enumerate(runs)
    ]
    session.add(experiment)
    session.flush()
    return experiment


def set_task_id(session: Session, run_id: str, task_id: str) -> None:
    """Record the Celery task id that carries a run (to revoke it later)."""
    session.execute(
        sql_update(Run.__table__).where(Run.id == run_id).values(celery_task_id=task_id)
    )


def request_cancel(session: Session, run_id: str) -> str | None:
    """Cancel a run: a queued one at once, a running one by flagging it for its worker.

    Returns the run's status afterwards (`cancelled`, `running` while its worker winds down, or
    the terminal status it already had), or None if there is no such run.
    """
    if _flag_for_cancel(session, Run.id == run_id):
        return RunStatus.RUNNING
    queued = and_(Run.id == run_id, Run.status == RunStatus.QUEUED)
    if _transition(session, {"status": RunStatus.CANCELLED}, queued):
        return RunStatus.CANCELLED
    return session.scalar(select(Run.status).where(Run.id == run_id))


def cancel_experiment(session: Session, experiment_id: str) -> list[str]:
    """Cancel every unfinished run of an experiment; returns their ids (to revoke tasks)."""
    in_experiment = Run.experiment_id == experiment_id
    flagged = _flag_for_cancel(session, in_experiment)
    queued = and_(in_experiment, Run.status == RunStatus.QUEUED)
    cancelled = _transition(session, {"status": RunStatus.CANCELLED}, queued)
    return sorted(flagged + [row.id for row in cancelled])


def delete_experiment(session: Session, experiment_id: str) -> bool:
    """Delete an experiment with everything it owns (the database cascades); False if unknown."""
    result = session.execute(delete(Experiment.__table__).where(Experiment.id == experiment_id))
    return result.rowcount > 0


def rename_experiment(session: Session, experiment_id: str, name: str) -> bool:
    """Give an experiment a new name, in its spec too (so that running it again keeps it);
    False if unknown."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        return False
    experiment.name = name
    experiment.spec = {**(experiment.spec or {}), "name": name}
    session.flush()
    return True


# --- run life cycle (worker) -------------------------------------------------------------------


def claim_run(
    session: Session, run_id: str, worker_id: str, stale_after_s: float | None = None
) -> Run | None:
    """Make `worker_id` the owner of a run and mark it running; None if it may not run it.

    A worker may take a queued run, a running run it already owns (a retry), or a running run
    whose heartbeat is older than `stale_after_s` (its worker died). Not a finished run, a
    cancelled one, or one another live worker is training. Each claim gets a new `claim_id`.
    """
    now = utcnow()
    claimable = or_(
        Run.status == RunStatus.QUEUED,
        and_(
            Run.status == RunStatus.RUNNING,
            or_(Run.worker_id == worker_id, _heartbeat_older_than(now, stale_after_s)),
        ),
    )
    values = {
        "status": RunStatus.RUNNING,
        "worker_id": worker_id,
        "attempts": Run.attempts + 1,
        "claim_id": new_id(),
        "heartbeat_at": now,
        "started_at": func.coalesce(Run.started_at, literal(now, UTCDateTime)),
    }
    if not _transition(session, values, Run.id == run_id, claimable, ~Run.cancel_requested):
        return None
    return session.get(Run, run_id, populate_existing=True)


def set_run_info(session: Session, run_id: str, **fields: Any) -> None:
    """Record facts the worker learns while starting: `device`, `data_source`, `total_steps`,
    `provenance`."""
    allowed = {"device", "data_source", "total_steps", "provenance"}
    if not fields.keys() <= allowed:
        raise TypeError(f"set_run_info accepts only {sorted(allowed)}, not {sorted(fields)}")
    session.execute(sql_update(Run.__table__).where(Run.id == run_id).values(**fields))


def heartbeat(
    session: Session, run_id: str, step: int | None, worker_id: str | None = None
) -> Control:
    """Renew a running run's heartbeat and progress (`step`, unless None); tells the worker
    whether to go on.

    With `worker_id`, the run must still belong to that worker (it may have been re-queued
    and claimed by another one while this worker was stalled).
    """
    owner = Run.worker_id == worker_id if worker_id is not None else true()
    progress = {} if step is None else {"step": step}
    row = session.execute(
        sql_update(Run.__table__)
        .where(Run.id == run_id, Run.status == RunStatus.RUNNING, owner)
        .values(heartbeat_at=utcnow(), **progress)
        .returning(Run.__table__.c.cancel_requested)
    ).first()
    if row is None:
        return Control.LOST
    return Control.CANCEL if row.cancel_requested else Control.CONTINUE


def is_cancel_requested(session: Session, run_id: str) -> bool:
    """True if the run was asked to stop (or no longer exists)."""
    flag = session.scalar(select(Run.cancel_requested).where(Run.id == run_id))
    return flag is None or bool(flag)


def set_status(
    session: Session,
    run_id: str,
    status: str,
    *,
    error: str | None = None,
    step: int | None = None,
    final_metrics: dict[str, Any] | None = None,
) -> bool:
    """Set an unfinished run's status (usually its outcome); False if it had already finished.

    Use `claim_run` to start a run; this is for `succeeded`, `failed`, `diverged` and
    `cancelled` (with the reason in `error` and the step at which it happened).
    """
    status = RunStatus(status)
    values: dict[str, Any] = {"status": status, "error": error}
    if step is not None:
        values["step"] = step
    if final_metrics is not None:
        values["final_metrics"] = to_jsonable(final_metrics)
        loss = values["final_metrics"].get("train_loss")
        values["final_train_loss"] = loss if isinstance(loss, int | float) else None
    return bool(_transition(session, values, Run.id == run_id, Run.status.in_(ACTIVE)))


def release_run(session: Session, run_id: str) -> bool:
    """A running run handed back by its worker (shutting down): `queued` again, and the claim's
    attempt undone, since a hand-back is not a failed attempt (`requeue_stale` fails a run
    whose worker died `max_attempts` times); False if it was not running."""
    values = {"status": RunStatus.QUEUED, "attempts": Run.attempts - 1, "error": None}
    running = and_(Run.id == run_id, Run.status == RunStatus.RUNNING)
    return bool(_transition(session, values, running))


def fail_queued(session: Session, run_id: str, reason: str) -> bool:
    """Fail a run that is still queued (no worker took it in time); False if it was not."""
    queued = and_(Run.id == run_id, Run.status == RunStatus.QUEUED)
    return bool(_transition(session, {"status": RunStatus.FAILED, "error": reason}, queued))


def stale_runs(session: Session, timeout_s: float | None = None) -> list[str]:
    """Ids of running runs whose heartbeat is older than `timeout_s` (default: settings)."""
    stale = _stale(utcnow(), timeout_s)
    return list(session.scalars(select(Run.id).where(stale).order_by(Run.id)))


def requeue_stale(
    session: Session, timeout_s: float | None = None, max_attempts: int = 3
) -> list[str]:
    """Put runs whose worker died back in the queue; returns the ids to send to workers again.

    A stale run that was being cancelled becomes `cancelled`; one that has already been tried
    `max_attempts` times becomes `failed` rather than looping forever.
    """
    now = utcnow()
    give_up = Run.attempts >= max_attempts
    lost = f"worker lost: no heartbeat within the timeout, {max_attempts} attempts made"
    outcome = {
        "status": case(
            (Run.cancel_requested, RunStatus.CANCELLED),
            (give_up, RunStatus.FAILED),
            else_=RunStatus.QUEUED,
        ),
        "error": case((and_(~Run.cancel_requested, give_up), lost), else_=Run.error),
        "finished_at": case((or_(Run.cancel_requested, give_up), now), else_=None),
    }
    stale = _stale(now, timeout_s)
    return sorted(row.id for row in _transition(session, outcome, stale) if row.status == "queued")


def fail_silent_tracked(session: Session, timeout_s: float, now: Any = None) -> list[str]:
    """Fail every running tracked run whose script has not been heard from (no write, no
    heartbeat: `backend.store.tracking.contact`) for `timeout_s` seconds, as of `now` (default:
    the clock); returns their ids. A script that died cannot end its run, and nothing else
    would: unlike a worker's run, nobody can take it over."""
    now = now or utcnow()
    silent = and_(
        Run.status == RunStatus.RUNNING, Run.tracked, _heartbeat_older_than(now, timeout_s)
    )
    reason = f"no contact from the script for {timeout_s:g} s"
    outcome = {"status": RunStatus.FAILED, "error": reason}
    return sorted(row.id for row in _transition(session, outcome, silent))


# --- helpers -----------------------------------------------------------------------------------


def _transition(session: Session, values: dict[str, Any], *conditions: Any) -> list[Row]:
    """Update the runs that match `conditions`; refresh their experiments' statuses and log one
    status event per run. Returns the updated runs (id, experiment_id, status, step, error).

    Locks are always taken in the same order: run rows (this one statement), then experiment
    rows, then the event log's (both sorted). So concurrent transitions, e.g. the API
    cancelling an experiment while workers finish its runs, wait for each other but never
    deadlock; nothing may update runs after a transition in the same transaction.
    `finished_at` is set when `values` give a plain finished status.
    """
    status = values["status"]
    if isinstance(status, str) and status not in ACTIVE:
        values = {**values, "finished_at": utcnow()}
    table = Run.__table__
    c = table.c
    rows = session.execute(
        sql_update(table)
        .where(*conditions)
        .values(**values)
        .returning(c.id, c.experiment_id, c.status, c.step, c.error)
    ).all()
    experiment_statuses = {
        experiment_id: _refresh_experiment_status(session, experiment_id)
        for experiment_id in sorted({row.experiment_id for row in rows})
    }
    for row in sorted(rows, key=lambda row: (row.experiment_id, row.id)):
        payload = {"run_id": row.id, "status": row.status, "step": row.step, "error": row.error}
        payload["experiment_status"] = experiment_statuses[row.experiment_id]
        append_event(session, row.experiment_id, "status", payload)
    return rows


def _flag_for_cancel(session: Session, *conditions: Any) -> list[str]:
    """Ask the workers of the running runs matching `conditions` to stop; returns their ids."""
    running = and_(*conditions, Run.status == RunStatus.RUNNING)
    table = Run.__table__
    flagged = session.execute(
        sql_update(table).where(running).values(cancel_requested=True).returning(table.c.id)
    )
    return list(flagged.scalars())


def _refresh_experiment_status(session: Session, experiment_id: str) -> str:
    """Recompute an experiment's status from its runs, under a lock on the experiment row.

    Without the lock, two runs finishing at once could each miss the other's (uncommitted)
    change and leave the experiment `running` for ever. The lock (FOR NO KEY UPDATE on
    PostgreSQL; SQLite has one writer anyway) does not block inserts that reference the row.
    """
    session.execute(
        select(Experiment.id).where(Experiment.id == experiment_id).with_for_update(key_share=True)
    )
    statuses = session.scalars(select(Run.status).where(Run.experiment_id == experiment_id))
    status = experiment_status(list(statuses))
    session.execute(
        sql_update(Experiment.__table__)
        .where(Experiment.id == experiment_id, Experiment.status != status)
        .values(status=status, updated_at=utcnow())
    )
    return status


def _stale(now: Any, timeout_s: float | None) -> Any:
    """Running runs trained by a worker whose heartbeat is older than `timeout_s`. Tracked
    runs are left out: no worker could take them over (`fail_silent_tracked` ends them)."""
    return and_(
        Run.status == RunStatus.RUNNING, ~Run.tracked, _heartbeat_older_than(now, timeout_s)
    )


def _heartbeat_older_than(now: Any, timeout_s: float | None) -> Any:
    if timeout_s is None:
        from backend.settings import get_settings

        timeout_s = get_settings().heartbeat_timeout_s
    cutoff = now - timedelta(seconds=timeout_s)
    return or_(Run.heartbeat_at.is_(None), Run.heartbeat_at < cutoff)


def experiment_of(session: Session, run_id: str) -> str:
    """The id of the experiment a run belongs to; raises `RunNotFound`."""
    experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_id))
    if experiment_id is None:
        raise RunNotFound(run_id)
    return experiment_id
