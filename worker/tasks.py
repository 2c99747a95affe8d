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
   (re-queued while it stalled), nothing is written; if it was deleted, its checkpoints go too.

A run that trains past `KFAC_RUN_TIME_LIMIT_S` fails with the reason. A cancel, the time limit,
a lost run or a shutdown do not wait for a long step to end: if the loop has not stopped a
couple of seconds later, the monitor's `on_stuck` stores what was recorded and the outcome
(`cancelled`; `failed` at the time limit; `queued` again at a shutdown), removes the
checkpoints of a run that is finished or deleted, and ends this pool process (`os._exit`).
Celery then replaces the process and, the task being acked late with `reject_on_worker_lost`,
puts its message back in the queue — where the next worker finds the run finished and drops it
(or, after a shutdown, resumes it), so a terminated run is never trained again.

When the worker shuts down (SIGTERM, Ctrl-C), a running run stops within a second and is handed
back: `queued` again (the attempt not counted) and its message rejected back into the queue, so
it resumes from its checkpoint on the next worker, or on this one after a restart. A message
taken during the shutdown is handed back the same way without being claimed. A run over
several nodes is handed back the same way when any of its nodes' workers shuts down (another
node asks through rank 0's store: worker/distributed.py); this worker then goes on.

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
from pathlib import Path

from celery.exceptions import Reject
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.queue import TRAIN_TASK, celery_app
from backend.settings import Settings, get_settings
from backend.spec import RunSpec
from backend.store.db import session_scope
from backend.store.models import Run, RunStatus
from backend.store.queries import run_exists
from backend.store.writes import claim_run, release_run, set_status
from worker.nodes import rendezvous_for
from worker.recording import RunMonitor, StopReason, StoreRecorder, is_transient
from worker.recovery import requeue_stale_runs
from worker.run_logs import capture_run_logs
from worker.run_types import RunControls, RunResult
from worker.training import CANCELLED_REASON, time_limit_reason, train

__all__ = ["execute_run", "requeue_stale_runs", "train_run"]

logger = logging.getLogger(__name__)

FINAL_WRITE_TIMEOUT_S = 120.0  # how long the last points and the outcome are retried
ABANDON_WRITE_TIMEOUT_S = 10.0  # the same when a stuck step is abandoned (a cancel is waiting)
ABANDONED_EXIT_CODE = 75  # the pool process ended a run without waiting for its step
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
        raise Reject("handed back: a worker of the run is shutting down", requeue=True)
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

    # The worker's log names each run it trains (the training loop's own start line, which
    # goes to the run's log too, does not know the run's id): one such line per attempt.
    logger.info("run %s starts (attempt %d)", run.id, run.attempts)
    url = settings.database_url
    checkpoint_dir = settings.artifacts_dir / run.id
    beat = min(2.0, settings.heartbeat_timeout_s / 4)
    limit = settings.run_time_limit_s
    # Why another node's worker asked rank 0 to hand the run back (worker/distributed.py).
    node_leaving: list[str] = []

    def this_or_a_node_s_worker_stopping() -> str | None:
        if stopping():
            return "this worker is shutting down"
        return node_leaving[0] if node_leaving else None

    with RunMonitor(
        run.id, worker, url, beat, shutting_down=this_or_a_node_s_worker_stopping,
        time_limit_s=limit,
    ) as monitor:  # fmt: skip
        recorder = StoreRecorder(run.id, url, monitor)

        def abandon(reason: StopReason) -> None:
            _abandon(settings, run.id, worker, recorder, monitor.step, checkpoint_dir, reason)

        monitor.on_stuck = abandon
        with capture_run_logs(recorder):
            controls = RunControls(
                checkpoint_dir=checkpoint_dir,
                should_stop=monitor.should_stop,
                data_dir=settings.data_dir,
                time_limit_s=limit,
            )
            rendezvous = rendezvous_for(run, spec, settings, node_leaving.append)
            result = train(spec, recorder, controls, rendezvous=rendezvous)
            if result.status == "failed":  # e.g. the time limit: no exception said why
                logger.warning("run %s: failed at step %d: %s", run.id, result.step, result.reason)
        monitor.training_over()
        stored = recorder.close(FINAL_WRITE_TIMEOUT_S)
        if _deleted(settings, run.id):
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            return "deleted"
        if monitor.reason is StopReason.LOST:
            return "lost"  # another worker owns it now and resumes from the checkpoints
        if not stored:
            # Points after the last checkpoint are not all stored: leave the run `running`.
            # Its heartbeat stops with the monitor, so it is re-queued and redone from there.
            return "not stored"
        if monitor.reason is StopReason.SHUTDOWN and result.status == "cancelled":
            released = _as_owner(settings, run.id, worker, release_run, timeout=10.0)
            return HANDED_BACK if released else "not handed back"
        if not _store_outcome(settings, run.id, worker, result):
            return "not stored"
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished for good: nothing to resume
    logger.info("run %s: %s at step %d %s", run.id, result.status, result.step, result.reason or "")
    return result.status


def _abandon(
    settings: Settings,
    run_id: str,
    worker: str,
    recorder: StoreRecorder,
    step: int,
    checkpoint_dir: Path,
    reason: StopReason,
) -> None:
    """End a run whose step outlived a stop, then this process (see the module doc). Called
    on the monitor's thread while the training thread is still inside the step."""
    recorder.close(ABANDON_WRITE_TIMEOUT_S)
    outcomes = {
        StopReason.CANCEL: RunResult("cancelled", step, CANCELLED_REASON),
        StopReason.TIME_LIMIT: RunResult(
            "failed", step, time_limit_reason(settings.run_time_limit_s, step)
        ),
    }
    finished = False
    if reason in outcomes:
        outcome = outcomes[reason]
        finished = _store_outcome(settings, run_id, worker, outcome, ABANDON_WRITE_TIMEOUT_S)
    elif reason is StopReason.SHUTDOWN:
        _as_owner(settings, run_id, worker, release_run, timeout=ABANDON_WRITE_TIMEOUT_S)
    if finished or _deleted(settings, run_id):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    logger.warning("run %s: ended at step %d (%s), its step abandoned", run_id, step, reason)
    logging.shutdown()
    os._exit(ABANDONED_EXIT_CODE)


def _deleted(settings: Settings, run_id: str) -> bool:
    """True if the run is gone from the store; False also when the store cannot say."""
    try:
        with session_scope(settings.database_url) as session:
            return not run_exists(session, run_id)
    except Exception as error:  # noqa: BLE001 - keep the checkpoints; the run may resume
        logger.warning("run %s: could not check whether it still exists: %s", run_id, error)
        return False


def _store_outcome(
    settings: Settings,
    run_id: str,
    worker: str,
    result: RunResult,
    timeout: float = FINAL_WRITE_TIMEOUT_S,
) -> bool:
    """Store a run's outcome with its step, reason and final metrics."""

    def finish(session: Session, run_id: str) -> bool:
        fields = {"error": result.reason, "step": result.step, "final_metrics": result.final}
        return set_status(session, run_id, result.status, **fields)

    return _as_owner(settings, run_id, worker, finish, timeout)


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
