"""The training task: one Celery task per run, safe to deliver twice and to kill at any moment.

`kfac.train_run(run_id)` does, in order:

1. load the run; a finished (or deleted) run is left alone, so a redelivered message is
   harmless;
2. claim it in the store (status `running`, attempts + 1, this process as its worker) — a
   conditional update, so of two workers holding messages for the same run only one trains it;
3. train it with `worker.training.train`, recording through a `StoreRecorder` and watched by a
   `RunMonitor` (heartbeat, cancel flag, worker shutdown; see worker/recording.py), with its
   checkpoints in `settings.artifacts_dir / run_id` so that a later attempt resumes;
4. store the outcome: `succeeded`, `diverged` or `failed` (with the step and the reason) or
   `cancelled`, and delete the checkpoints. If the run was taken away from this worker
   (re-queued while it stalled, or deleted), nothing is written.

When the worker shuts down (SIGTERM, Ctrl-C), a running run stops within a second and is handed
back: `queued` again (the attempt not counted) and its message rejected back into the queue, so
it resumes from its checkpoint on the next worker, or on this one after a restart. A message
taken during the shutdown is handed back the same way without being claimed.

Apart from that rejection the task always returns normally: an exception fails the run, never
the worker. Runs whose worker died are found by their stale heartbeat (worker/recovery.py;
`requeue_stale_runs` is re-exported here).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import socket
import time
from collections.abc import Callable

from celery.exceptions import Reject
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.queue import TRAIN_TASK, celery_app
from backend.settings import Settings, get_settings
from backend.spec import RunSpec
from backend.store.db import session_scope
from backend.store.models import Run, RunStatus
from backend.store.writes import claim_run, set_status
from worker.recording import RunMonitor, StopReason, StoreRecorder, is_transient
from worker.recovery import requeue_stale_runs
from worker.training import RunResult, train

__all__ = ["execute_run", "requeue_stale_runs", "train_run"]

logger = logging.getLogger(__name__)

FINAL_WRITE_TIMEOUT_S = 120.0  # how long the last points and the outcome are retried
HANDED_BACK = "handed back"

# Set by the worker's main process when it starts shutting down (worker/celery_app.py). Shared
# memory created before the pool forks, so every child sees it; a lock-free byte, because it
# is set from a signal handler.
WORKER_STOPPING = multiprocessing.RawValue("b", 0)


def worker_stopping() -> bool:
    return bool(WORKER_STOPPING.value)


@celery_app().task(
    name=TRAIN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True
)
def train_run(self, run_id: str) -> str:
    """Train one run (see the module doc); returns what happened, for the worker's log."""
    outcome = execute_run(run_id, get_settings(), worker_id=worker_id())
    if outcome == HANDED_BACK:
        raise Reject("the worker is shutting down", requeue=True)
    return outcome


def worker_id() -> str:
    """This process, as the store records who trains a run: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_run(
    run_id: str,
    settings: Settings,
    *,
    worker_id: str,
    stopping: Callable[[], bool] = worker_stopping,
) -> str:
    """Claim, train and finish one run; returns what happened and never raises."""
    if stopping():
        return HANDED_BACK
    try:
        claimed = _claim(run_id, settings, worker_id)
    except Exception:
        # The store is unreachable: the run stays queued, and since this message is consumed
        # the recovery pass sends it again once it has waited a heartbeat timeout.
        logger.exception("run %s: could not claim it", run_id)
        return "not claimed"
    if isinstance(claimed, str):
        logger.info("run %s: nothing to do (%s)", run_id, claimed)
        return claimed
    try:
        return _train_claimed(claimed, settings, worker_id, stopping)
    except Exception as error:
        logger.exception("run %s: the task failed", run_id)
        failure = RunResult("failed", claimed.step, f"{type(error).__name__}: {error}")
        _store_outcome(settings, run_id, worker_id, failure)
        return "failed"


def _claim(run_id: str, settings: Settings, worker: str) -> Run | str:
    """The claimed run, or why it is not ours to train."""
    with session_scope(settings.database_url) as session:
        run = session.get(Run, run_id)
        if run is None:
            return "no such run"
        if RunStatus(run.status).terminal:
            return f"already {run.status}"
        claimed = claim_run(session, run_id, worker, stale_after_s=settings.heartbeat_timeout_s)
        return claimed if claimed is not None else f"{run.status}, not claimable"


def _train_claimed(run: Run, settings: Settings, worker: str, stopping: Callable[[], bool]) -> str:
    try:
        spec = RunSpec.model_validate(run.spec)
    except ValidationError as error:
        invalid = RunResult("failed", 0, f"invalid run spec: {error}")
        _store_outcome(settings, run.id, worker, invalid)
        return "failed"

    url = settings.database_url
    checkpoint_dir = settings.artifacts_dir / run.id
    beat = min(2.0, settings.heartbeat_timeout_s / 4)
    with RunMonitor(run.id, worker, url, beat, worker_stopping=stopping) as monitor:
        recorder = StoreRecorder(run.id, url, monitor)
        result = train(
            spec,
            recorder,
            checkpoint_dir=checkpoint_dir,
            should_stop=monitor.should_stop,
            data_dir=settings.data_dir,
        )
        stored = recorder.close(FINAL_WRITE_TIMEOUT_S)
        if monitor.reason is StopReason.LOST:
            return "lost"  # another worker owns it now, or it was deleted
        if not stored:
            # Points after the last checkpoint are not all stored: leave the run `running`.
            # Its heartbeat stops with the monitor, so it is re-queued and redone from there.
            return "not stored"
        if monitor.reason is StopReason.SHUTDOWN and result.status == "cancelled":
            released = _as_owner(settings, run.id, worker, _release, timeout=10.0)
            return HANDED_BACK if released else "not handed back"
        if not _store_outcome(settings, run.id, worker, result):
            return "not stored"
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished for good: nothing to resume
    logger.info("run %s: %s at step %d %s", run.id, result.status, result.step, result.reason or "")
    return result.status


def _store_outcome(settings: Settings, run_id: str, worker: str, result: RunResult) -> bool:
    """Store a run's outcome with its step, reason and final metrics."""

    def finish(session: Session, run_id: str) -> bool:
        fields = {"error": result.reason, "step": result.step, "final_metrics": result.final}
        return set_status(session, run_id, result.status, **fields)

    return _as_owner(settings, run_id, worker, finish)


def _release(session: Session, run_id: str) -> bool:
    """Back to `queued`; a hand-back is not a failed attempt, so the claim's count is undone
    (the store fails a run whose worker died `MAX_ATTEMPTS` times)."""
    table = Run.__table__
    running = (table.c.id == run_id, table.c.status == RunStatus.RUNNING)
    session.execute(update(table).where(*running).values(attempts=table.c.attempts - 1))
    return set_status(session, run_id, RunStatus.QUEUED)


def _as_owner(
    settings: Settings,
    run_id: str,
    worker: str,
    change: Callable[[Session, str], bool],
    timeout: float = FINAL_WRITE_TIMEOUT_S,
) -> bool:
    """Apply `change` to a run in one transaction if the run is still this worker's, retrying
    transient database errors for up to `timeout` seconds; False if it was not done.

    The run row is locked first (as every transition does) and its owner checked: a worker that
    stalled past the heartbeat timeout must not overwrite the run of the worker that took over.
    """
    end, delay = time.monotonic() + timeout, 0.2
    while True:
        try:
            with session_scope(settings.database_url) as session:
                owner = session.scalar(
                    select(Run.worker_id).where(Run.id == run_id).with_for_update()
                )
                return owner == worker and change(session, run_id)
        except Exception as error:
            if not is_transient(error) or time.monotonic() + delay > end:
                logger.exception("run %s: could not store its state", run_id)
                return False
            logger.warning("run %s: could not store its state (%s); retrying", run_id, error)
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
