"""Finding runs that nobody is going to train, and sending them to a worker again.

A run can be stranded two ways, and no broker rescues it reliably (see backend/queue.py):

1. Its worker died (SIGKILL, OOM, a lost machine): the run stays `running`, but its heartbeat
   stops. `requeue_stale` in the store turns every run whose heartbeat is older than
   `settings.heartbeat_timeout_s` back into `queued` (or `failed` after too many attempts,
   `cancelled` if a cancel was pending), and this module sends it again; the next worker
   resumes it from its last checkpoint.
2. Its task message was lost while it was `queued`: the broker restarted without persistence,
   the API crashed between storing the run and sending it, a worker died holding the message
   (the filesystem transport removes a message when it is fetched), or sending failed while the
   broker was down. Which message is missing cannot be asked of every broker, but how many are
   waiting can: when a queue holds fewer messages than it has queued runs, the runs of that
   queue that have waited longer than the heartbeat timeout are sent again.

Sending a run twice is always harmless: the task claims a run with a conditional update, so a
second message finds it running or finished and does nothing. That is what makes the counting
rule sound even though it can err (a message being fetched at the moment of counting, or
messages of cancelled runs that still sit in the queue): an error costs one idle message or a
delay of one period, never a run trained twice. A queued run's `heartbeat_at` records when its
message was last sent; claiming that moment with a conditional update makes one reaper out of
many re-send a given run, and only once per timeout.

3. Nobody consumes its queue (a run asking for `cuda` where no GPU worker listens). Workers
   record their queues and a heartbeat in the store on every pass (backend/store/queueing.py);
   a run whose spec sets `queue_timeout_s` and that has waited that long on a queue with no
   live worker is failed, or moved to the CPU queue (`on_queue_timeout: cpu`).

4. Its script died (tracked runs, reported by a user's own script through `kfac_lab`): the
   client renews the run's heartbeat with every request and a light one when idle, so a run
   not heard from for `settings.tracking_timeout_s` has lost its script. No worker can take it
   over, so it is failed with that reason (`fail_silent_tracked` in the store).

`requeue_stale_runs(settings)` does one pass of all four; every worker runs it periodically on
a daemon thread (`start_reaper`), which also renews the worker's own entry. This module imports
neither torch nor the training code, so the API process may import it too.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from datetime import datetime, timedelta

from pydantic import ValidationError

from backend import queue as broker
from backend.settings import Settings
from backend.spec import RunSpec, queue_for
from backend.store.db import session_scope
from backend.store.models import utcnow
from backend.store.queueing import (
    beat_worker,
    forget_worker,
    live_queues,
    move_to_cpu,
    queued_runs,
    take_for_sending,
)
from backend.store.writes import fail_queued, fail_silent_tracked, requeue_stale, set_task_id

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # a run whose worker died this many times is failed, not re-queued again


def requeue_stale_runs(settings: Settings) -> list[str]:
    """One recovery pass (see the module doc); returns the ids of the runs sent again."""
    with session_scope(settings.database_url) as session:
        stale = requeue_stale(session, settings.heartbeat_timeout_s, max_attempts=MAX_ATTEMPTS)
    if stale:
        logger.warning("re-queueing runs whose worker stopped beating: %s", stale)
    sent = [run_id for run_id in stale if send_again(settings, run_id)]
    fail_silent_tracked_runs(settings)
    return sent + resend_lost_messages(settings) + apply_queue_timeouts(settings)


def fail_silent_tracked_runs(settings: Settings) -> list[str]:
    """Fail the tracked runs whose script has been silent too long; returns their ids."""
    with session_scope(settings.database_url) as session:
        silent = fail_silent_tracked(session, settings.tracking_timeout_s)
    if silent:
        logger.warning(
            "failing tracked runs not heard from for %g s: %s", settings.tracking_timeout_s, silent
        )
    return silent


def apply_queue_timeouts(settings: Settings) -> list[str]:
    """Fail, or move to the CPU queue (and send), every queued run that has waited its spec's
    `queue_timeout_s` on a queue no live worker consumes; returns the ids of the runs sent."""
    with session_scope(settings.database_url) as session:
        live = live_queues(session, settings.heartbeat_timeout_s)
        waiting = queued_runs(session)
    now, sent = utcnow(), []
    for run_id, raw, _, created_at in waiting:
        spec = _spec_of(raw)
        if spec is None or spec.queue_timeout_s is None or queue_for(spec) in live:
            continue
        if created_at > now - timedelta(seconds=spec.queue_timeout_s):
            continue
        queue = queue_for(spec)
        with session_scope(settings.database_url) as session:
            if spec.on_queue_timeout == "fail":
                reason = f"no worker consumed queue {queue} within {spec.queue_timeout_s:g} s"
                fail_queued(session, run_id, reason)
                continue
            moved = move_to_cpu(session, run_id)
        if moved:
            logger.warning("run %s: nobody consumes queue %s; moved to queue cpu", run_id, queue)
            if send_again(settings, run_id):
                sent.append(run_id)
    return sent


def resend_lost_messages(settings: Settings) -> list[str]:
    """Send again the long-waiting queued runs of every queue that misses messages."""
    waiting = _queued_runs(settings)
    if not waiting:
        return []
    depths = queue_depths(list(waiting))
    cutoff = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
    sent = []
    for queue, runs in waiting.items():
        if depths[queue] >= len(runs):
            continue
        for run_id, since in runs:
            if since < cutoff and send_again(settings, run_id, waited_before=cutoff):
                sent.append(run_id)
    if sent:
        logger.warning("re-sent queued runs whose message was missing: %s", sent)
    return sent


def send_again(settings: Settings, run_id: str, waited_before: datetime | None = None) -> bool:
    """Send a queued run's task again; False if it is not queued (any more), or was sent by
    someone else after `waited_before`, or the broker is unreachable (a later pass retries)."""
    with session_scope(settings.database_url) as session:
        spec = take_for_sending(session, run_id, waited_before)
    if spec is None:
        return False
    try:
        task_id = broker.send_run(run_id, _queue_of(spec))
    except Exception as error:  # noqa: BLE001 - the broker may be down; retried next pass
        logger.warning("could not send run %s: %s", run_id, error)
        return False
    with session_scope(settings.database_url) as session:
        set_task_id(session, run_id, task_id)
    return True


def queue_depths(queues: list[str]) -> dict[str, int]:
    """How many messages wait in each queue (not counting those a worker holds)."""
    with broker.celery_app().connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=3)
        channel = connection.default_channel
        return {name: channel.queue_declare(queue=name).message_count for name in queues}


class Reaper:
    """Runs `requeue_stale_runs` every `interval` seconds on a daemon thread; with a
    `worker_id`, first records that worker and its `queues` as alive (and forgets it on stop)."""

    def __init__(
        self,
        settings: Settings,
        interval: float | None = None,
        worker_id: str | None = None,
        queues: tuple[str, ...] = (),
    ):
        self.settings = settings
        self.interval = interval or reaper_interval(settings)
        self.worker_id, self.queues = worker_id, queues
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kfac-reaper", daemon=True)

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        if self.worker_id is not None:
            try:
                with session_scope(self.settings.database_url) as session:
                    forget_worker(session, self.worker_id)
            except Exception as error:  # noqa: BLE001 - its entry goes stale by itself
                logger.warning("could not unregister worker %s: %s", self.worker_id, error)

    def _loop(self) -> None:
        while True:
            try:
                if self.worker_id is not None:
                    with session_scope(self.settings.database_url) as session:
                        beat_worker(session, self.worker_id, self.queues)
                requeue_stale_runs(self.settings)
            except Exception as error:  # noqa: BLE001 - database or broker down: next pass
                logger.warning("recovery pass failed: %s", error)
            if self._stop.wait(self.interval):
                return


def reaper_interval(settings: Settings) -> float:
    """Often enough that a stale run waits at most about 1.5 timeouts, at most every 10 s."""
    return min(10.0, max(0.5, settings.heartbeat_timeout_s / 2))


def start_reaper(settings: Settings, worker_id: str, queues: tuple[str, ...]) -> Reaper:
    return Reaper(settings, worker_id=worker_id, queues=queues).start()


# --- helpers -----------------------------------------------------------------------------------


def _queued_runs(settings: Settings) -> dict[str, list[tuple[str, datetime]]]:
    """The queued runs by queue, each with the time since which it has been waiting."""
    with session_scope(settings.database_url) as session:
        rows = queued_runs(session)
    waiting: dict[str, list[tuple[str, datetime]]] = defaultdict(list)
    for run_id, spec, waiting_since, _ in rows:
        waiting[_queue_of(spec)].append((run_id, waiting_since))
    return waiting


def _spec_of(spec: dict) -> RunSpec | None:
    try:
        return RunSpec.model_validate(spec)
    except ValidationError:
        return None  # the task will fail it with the validation error


def _queue_of(spec: dict) -> str:
    validated = _spec_of(spec)
    return "cpu" if validated is None else queue_for(validated)
