"""The store's side of the queues: which worker consumes which queue, and the queued runs.

Every worker process records the queues it consumes and renews a heartbeat here (from its
recovery pass, worker/recovery.py). A queue that no worker has beaten for within the heartbeat
timeout has nobody listening: a run waiting on it says so (`status_detail`), and after its
spec's `queue_timeout_s` the recovery pass fails it or moves it to the CPU queue
(`on_queue_timeout`). The recovery pass also reads the queued runs and claims the right to
send one again from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from backend.spec import queue_for_device
from backend.store.models import Run, RunStatus, Worker, utcnow


def beat_worker(session: Session, worker_id: str, queues: Iterable[str]) -> None:
    """Record that `worker_id` is alive and consumes `queues`."""
    now, names = utcnow(), sorted(queues)
    table = Worker.__table__
    updated = session.execute(
        update(table).where(table.c.id == worker_id).values(queues=names, heartbeat_at=now)
    )
    if updated.rowcount == 0:
        session.execute(
            insert(table).values(id=worker_id, queues=names, started_at=now, heartbeat_at=now)
        )


def forget_worker(session: Session, worker_id: str) -> None:
    """A worker that stops says so, rather than leaving its queues live for a timeout."""
    session.execute(delete(Worker.__table__).where(Worker.id == worker_id))


def live_queues(session: Session, timeout_s: float) -> set[str]:
    """The queues consumed by a worker whose heartbeat is younger than `timeout_s`."""
    cutoff = utcnow() - timedelta(seconds=timeout_s)
    rows = session.scalars(select(Worker.queues).where(Worker.heartbeat_at >= cutoff))
    return {queue for queues in rows for queue in queues}


def status_detail(status: str, spec: dict[str, Any], live: set[str]) -> str | None:
    """What a run waits for, when nobody listens on its queue."""
    queue = queue_for_device(spec.get("device", "auto"))
    if status != RunStatus.QUEUED or queue in live:
        return None
    detail = f"waiting for a worker on queue {queue}"
    if (timeout := spec.get("queue_timeout_s")) is not None:
        then = "moves to queue cpu" if spec.get("on_queue_timeout") == "cpu" else "fails"
        detail += f"; {then} after {timeout:g} s"
    return detail


def queued_runs(session: Session) -> list[tuple[str, dict, datetime, datetime]]:
    """(id, spec, waiting since, created at) of every queued run not being cancelled, oldest
    first; a run waits since its message was last sent (`heartbeat_at`) or its creation."""
    since = func.coalesce(Run.heartbeat_at, Run.created_at)
    rows = session.execute(
        select(Run.id, Run.spec, since, Run.created_at)
        .where(Run.status == RunStatus.QUEUED, ~Run.cancel_requested)
        .order_by(Run.created_at)
    ).all()
    return [tuple(row) for row in rows]


def queue_positions(session: Session) -> dict[str, int]:
    """Each queued run's place in its queue, 1 being the next a free worker takes: workers take
    a queue's runs oldest first (prefetch 1), so a run waits for the runs queued before it on
    the same queue, whatever their experiment."""
    counts: dict[str, int] = {}
    positions = {}
    for run_id, spec, _since, _created in queued_runs(session):
        queue = queue_for_device(spec.get("device", "auto"))
        counts[queue] = positions[run_id] = counts.get(queue, 0) + 1
    return positions


def take_for_sending(session: Session, run_id: str, waited_before: datetime | None) -> dict | None:
    """Mark a queued run as sent now and return its spec; None if it is not queued, or (with
    `waited_before`) was sent after that time — by another reaper, most likely."""
    conditions = [Run.id == run_id, Run.status == RunStatus.QUEUED, ~Run.cancel_requested]
    if waited_before is not None:
        conditions.append(func.coalesce(Run.heartbeat_at, Run.created_at) < waited_before)
    table = Run.__table__
    row = session.execute(
        update(table).where(*conditions).values(heartbeat_at=utcnow()).returning(table.c.spec)
    ).first()
    return None if row is None else row.spec


def move_to_cpu(session: Session, run_id: str) -> bool:
    """Make a queued run's spec ask for the CPU (`on_queue_timeout: cpu`); False if the run is
    no longer queued."""
    run = session.scalar(
        select(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED).with_for_update()
    )
    if run is None:
        return False
    run.spec = {**run.spec, "device": "cpu"}
    session.flush()
    return True
