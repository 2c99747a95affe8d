"""Tracked runs: runs that a user's own training script reports through the `kfac_lab` client.

They live in the same tables as the runs workers train, so every page, the live stream and the
comparison show them alike; only their life cycle differs:

* the client chooses the run id (a random 128-bit hex string) before it can reach the server,
  so creating a run is idempotent: a retried create finds the run it made the first time;
* runs join an experiment by name (`Experiment.tracking_name`, unique): get-or-create, safe
  when several scripts on several machines start at once;
* a run starts `running` through `claim_run` (status event, experiment status refreshed, as
  for a worker's run) with the client's host as its "worker";
* metric batches and snapshots go through `backend.store.results` (idempotent per
  (run, metric, step) and (run, step), each logging its event);
* liveness: every write of the script (metrics, logs, snapshots, and the client's light
  heartbeat when it has nothing to send) is a `contact`, which renews the run's `heartbeat_at`;
  the recovery pass fails a run not heard from for `tracking_timeout_s`
  (`writes.fail_silent_tracked`). Only a running run takes records: a script that comes back
  after its run has ended is told so (`RunEnded`, a 409 at the API);
* `finish` / `fail` set the outcome through `set_status`; a retried end changes nothing,
  an end with another outcome than the run's is refused (`RunEnded`).

Like the rest of the store, functions take the caller's `Session` and never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert
from backend.store.models import Experiment, Run, RunStatus, new_id
from backend.store.results import write_metrics, write_snapshot
from backend.store.writes import Control, RunNotFound, claim_run, heartbeat, set_status

TRACKED_SPEC_KIND = "tracked"  # `spec["kind"]` of a tracked experiment or run


class NotTracked(ValueError):
    """The run exists but a worker trains it: the tracking endpoints may not write to it."""


class RunEnded(ValueError):
    """The tracked run has ended (by its script, or failed by the lab for silence) and takes
    no more records; the message says how it ended."""

    def __init__(self, run: Run):
        reason = f": {run.error}" if run.error else ""
        super().__init__(f"run {run.id} has ended {run.status}{reason}; it takes no more records")


def start_run(
    session: Session,
    *,
    run_id: str,
    experiment: str,
    label: str,
    config: dict[str, Any],
    optimizer: dict[str, Any],
    seed: int,
    client: str,
    total_steps: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> tuple[Run, bool]:
    """The tracked run `run_id` in the experiment named `experiment`, created `running` if it
    does not exist yet; returns it and whether it was created now.

    Raises `NotTracked` if `run_id` is a worker's run, `ValueError` if it is a tracked run of
    another experiment (the client never reuses an id, so that is a mistake, not a retry)."""
    experiment_id = _experiment_by_name(session, experiment)
    existing = session.get(Run, run_id)
    if existing is not None:
        if not existing.tracked:
            raise NotTracked(run_id)
        if existing.experiment_id != experiment_id:
            raise ValueError(f"run {run_id} belongs to another experiment")
        return existing, False
    position = session.scalar(
        select(func.count()).select_from(Run).where(Run.experiment_id == experiment_id)
    )
    inserted = session.execute(
        dialect_insert(session, Run.__table__)
        .values(
            id=run_id,
            experiment_id=experiment_id,
            position=position,
            label=label,
            optimizer=optimizer,
            seed=seed,
            spec={"kind": TRACKED_SPEC_KIND, "config": config},
            status=RunStatus.QUEUED,
            total_steps=total_steps,
            provenance=provenance,
            tracked=True,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Run.__table__.c.id)
    ).first()
    if inserted is None:  # a concurrent retry of the same create won the race
        return session.get(Run, run_id, populate_existing=True), False
    run = claim_run(session, run_id, client)
    assert run is not None, "a queued run without a cancel flag is claimable"
    return run, True


def record_metrics(
    session: Session, run_id: str, points: Sequence[tuple[str, int, float, float]]
) -> tuple[int, bool]:
    """Store a tracked run's metric points (name, step, wall_time, value). Returns how many
    were new and whether a cancel was requested (from the page), which the client reports to
    the script. A contact that also records the run's progress (the client sends batches in
    step order, so the last batch's highest step is the run's step)."""
    cancel = contact(session, run_id, max((point[1] for point in points), default=None))
    return write_metrics(session, run_id, points), cancel


def record_snapshot(session: Session, run_id: str, step: int, **payload: Any) -> int:
    """Store a tracked run's curvature snapshot (`write_snapshot`'s arguments); its id."""
    contact(session, run_id)
    return write_snapshot(session, run_id, step, **payload)


def contact(session: Session, run_id: str, step: int | None = None) -> bool:
    """The script of tracked run `run_id` is alive: renew the run's heartbeat (and its `step`,
    if given). Returns whether a cancel was requested from the page. Raises `RunNotFound`,
    `NotTracked`, or `RunEnded` when the run no longer runs."""
    run = tracked_run(session, run_id)
    control = heartbeat(session, run_id, step)
    if control is Control.LOST:
        session.refresh(run)
        raise RunEnded(run)
    return control is Control.CANCEL


def end_run(
    session: Session,
    run_id: str,
    status: str,
    *,
    error: str | None = None,
    step: int | None = None,
    final_metrics: dict[str, float] | None = None,
) -> Run:
    """Set a tracked run's outcome (`succeeded` or `failed` with a reason) and return the run.
    A run that has already ended keeps its outcome: a retried end with the same status changes
    nothing, another status (a script ending a run the lab failed for silence) raises
    `RunEnded`."""
    run = tracked_run(session, run_id)
    set_status(session, run_id, status, error=error, step=step, final_metrics=final_metrics)
    session.refresh(run)
    if run.status != status:
        raise RunEnded(run)
    return run


def tracked_run(session: Session, run_id: str) -> Run:
    """The tracked run `run_id`; raises `RunNotFound` or `NotTracked`."""
    run = session.get(Run, run_id)
    if run is None:
        raise RunNotFound(run_id)
    if not run.tracked:
        raise NotTracked(run_id)
    return run


def _experiment_by_name(session: Session, name: str) -> str:
    """The id of the tracked experiment called `name`, created (queued, no runs) if needed."""
    table = Experiment.__table__
    session.execute(
        dialect_insert(session, table)
        .values(
            id=new_id(),
            name=name,
            tracking_name=name,
            spec={"kind": TRACKED_SPEC_KIND, "name": name, "description": "", "runs": []},
            status=RunStatus.QUEUED,
        )
        .on_conflict_do_nothing(index_elements=["tracking_name"])
    )
    return session.scalar(select(table.c.id).where(table.c.tracking_name == name))
