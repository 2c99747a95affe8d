"""How a run in a worker talks to the store: a recorder that writes, a monitor that listens.

Both work on background threads so that the training loop never waits for the database:

* `StoreRecorder` implements `worker.run_types.Recorder`. Metric points, snapshots, run facts
  and log lines (`log`, fed by `worker.run_logs.capture_run_logs`) are queued in memory and
  written in order by one writer thread, with consecutive metric (or log) batches merged into
  one transaction. When the database is briefly unavailable (a restart, a
  locked SQLite file, a network blip) the writer keeps the batch and retries with backoff while
  training goes on and new points pile up behind it; nothing recorded is dropped. Every write is
  idempotent in the store (per run, metric and step; per run and step for snapshots; per run and
  line number for logs, numbered here once, before the first attempt), so a retry
  after an ambiguous failure — the commit happened but its answer was lost — is harmless.
  `sync()` is the barrier the training loop calls before a checkpoint (see `Recorder.sync`).
* `RunMonitor` renews the run's heartbeat (with its progress, `runs.step`) every few seconds
  and reads the cancel flag twice a second, so `should_stop()` is an in-memory read that costs
  the training loop nothing, and a database hiccup delays a cancel instead of stalling training.
  It also notices when the run is no longer this worker's (re-queued after a stall, or deleted)
  and when the worker itself is shutting down. The training loop polls `should_stop()` between
  steps, so one long step (a K-FAC inverse of a wide layer can take minutes) would delay any of
  these until it ends: when the loop has not stopped `grace_s` after a stop signal, or
  `grace_s` after the run's time limit, the monitor calls `on_stuck(reason)`, which ends the
  run without waiting for the step (worker/tasks.py: it stores the outcome and exits).

Neither imports torch: the payloads they pass on are plain Python and numpy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import exc as sa_exc

from backend.store.db import session_scope
from backend.store.results import write_metrics, write_snapshot
from backend.store.run_logs import next_log_seq, write_log_lines
from backend.store.writes import (
    Control,
    RunNotFound,
    heartbeat,
    is_cancel_requested,
    set_run_info,
)

logger = logging.getLogger(__name__)

MAX_BATCH_POINTS = 50_000  # one transaction; a backlog after an outage is written in chunks
MAX_BATCH_LINES = 500  # log lines per transaction
RETRY_FIRST_S, RETRY_MAX_S = 0.2, 5.0
SYNC_TIMEOUT_S = 60.0
POLL_S = 0.5  # how often the cancel flag is read
STEP_GRACE_S = 2.0  # how long a stop waits for the step in progress before `on_stuck`


def is_transient(error: BaseException) -> bool:
    """True for failures that a later attempt may not meet: connection trouble, a locked or
    restarting database, a pool timeout. Anything else (a constraint, a bug) is permanent."""
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError | OSError)


@dataclass
class _Item:
    kind: str  # "metrics", "logs", "snapshot" or "info"
    data: Any
    step: int = 0
    numbered: bool = False  # log lines: their numbers are given (and kept for retries)


class StoreRecorder:
    """A `Recorder` that stores a run's results through a writer thread (see module doc)."""

    def __init__(self, run_id: str, database_url: str, monitor: RunMonitor | None = None):
        self.run_id, self.url, self.monitor = run_id, database_url, monitor
        self._pending: deque[_Item] = deque()
        self._busy = False  # an item is being written
        self._healthy = True  # the last write attempt succeeded
        self._closing = self._abandoned = False
        self._log_seq: int | None = None  # the next line's number, read from the store once
        self._cv = threading.Condition()
        self._thread = threading.Thread(
            target=self._write_loop, name=f"recorder-{run_id[:8]}", daemon=True
        )
        self._thread.start()

    # -- the Recorder protocol (called from the training loop) --
    def info(self, details: dict[str, Any]) -> None:
        fields = {
            key: details[key]
            for key in ("device", "data_source", "total_steps", "provenance")
            if details.get(key) is not None
        }
        if fields:
            self._put(_Item("info", fields))

    def metrics(self, points: list[tuple[str, int, float, float]]) -> None:
        if points:
            self._put(_Item("metrics", list(points)))

    def snapshot(self, step: int, payload: dict[str, Any]) -> None:
        self._put(_Item("snapshot", payload, step))

    def log(self, lines: list[tuple[float, str, str]]) -> None:
        """Log lines (unix time, level, message) of the run, stored in order."""
        if lines:
            self._put(_Item("logs", list(lines)))

    @property
    def writer_thread(self) -> threading.Thread:
        """The thread that writes (its own log records are not the run's: see run_logs)."""
        return self._thread

    def progress(self, step: int) -> None:
        if self.monitor is not None:
            self.monitor.step = step

    def sync(self, timeout: float = SYNC_TIMEOUT_S) -> bool:
        """Wait until everything queued so far is stored; False at once while the database is
        failing (the caller skips its checkpoint rather than wait out an outage)."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._pending or self._busy:
                remaining = deadline - time.monotonic()
                if not self._healthy or remaining <= 0:
                    return False
                self._cv.wait(remaining)
            return True

    # -- life cycle --
    def close(self, timeout: float) -> bool:
        """Write what is left (retrying up to `timeout`) and stop; True if all was stored."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cv:
                self._abandoned = True
                lost = sum(len(i.data) if i.kind == "metrics" else 1 for i in self._pending)
                self._cv.notify_all()
            logger.error("run %s: could not store %d queued records", self.run_id, lost)
            return False
        return True

    # -- the writer thread --
    def _put(self, item: _Item) -> None:
        with self._cv:
            if self._closing:
                raise RuntimeError("the recorder is closed")
            self._pending.append(item)
            self._cv.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closing:
                    self._cv.wait()
                if not self._pending or self._abandoned:
                    return
                item = self._next_item()
                self._busy = True
            try:
                self._write_with_retry(item)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _next_item(self) -> _Item:
        """The oldest item; consecutive metric batches, and log batches, are merged into one
        (order is kept)."""
        item = self._pending.popleft()
        limit = {"metrics": MAX_BATCH_POINTS, "logs": MAX_BATCH_LINES}.get(item.kind)
        if limit is None:
            return item
        data = list(item.data)
        while (
            self._pending
            and self._pending[0].kind == item.kind
            and len(data) + len(self._pending[0].data) <= limit
        ):
            data.extend(self._pending.popleft().data)
        return _Item(item.kind, data)

    def _write_with_retry(self, item: _Item) -> None:
        delay, attempt = RETRY_FIRST_S, 0
        while True:
            attempt += 1
            try:
                self._write(item)
                self._healthy = True
                return
            except RunNotFound:
                logger.warning("run %s was deleted; dropping its results", self.run_id)
                self._healthy = True
                return
            except Exception as error:  # noqa: BLE001 - classified below, never lost silently
                permanent = not is_transient(error)
                if permanent and attempt >= 3:
                    logger.exception("run %s: dropping a %s record", self.run_id, item.kind)
                    self._healthy = True
                    return
                logger.warning(
                    "run %s: storing %s failed (%s); retrying in %.1f s",
                    self.run_id,
                    item.kind,
                    error,
                    delay,
                )
            with self._cv:
                self._healthy = False
                self._cv.notify_all()  # a waiting `sync` gives up now
                # New points notify too (once a second): only `close` giving up may cut the
                # backoff short, or a long outage would be retried at the flush rate.
                retry_at = time.monotonic() + delay
                while not self._abandoned and (left := retry_at - time.monotonic()) > 0:
                    self._cv.wait(left)
                if self._abandoned:
                    return
            delay = min(2 * delay, RETRY_MAX_S)

    def _write(self, item: _Item) -> None:
        with session_scope(self.url) as session:
            if item.kind == "metrics":
                write_metrics(session, self.run_id, item.data)
            elif item.kind == "logs":
                write_log_lines(session, self.run_id, self._numbered(session, item))
            elif item.kind == "snapshot":
                write_snapshot(session, self.run_id, item.step, **item.data)
            else:
                set_run_info(session, self.run_id, **item.data)

    def _numbered(self, session: Any, item: _Item) -> list[tuple[int, float, str, str]]:
        """The item's lines with their numbers, given once: a retry sends the same numbers."""
        if not item.numbered:
            if self._log_seq is None:
                self._log_seq = next_log_seq(session, self.run_id)
            item.data = [(self._log_seq + i, *line) for i, line in enumerate(item.data)]
            self._log_seq += len(item.data)
            item.numbered = True
        return item.data


class StopReason(StrEnum):
    CANCEL = "cancel"  # a cancel was requested: the run ends `cancelled`
    LOST = "lost"  # the run is no longer this worker's: leave it alone
    SHUTDOWN = "shutdown"  # the worker is stopping: hand the run back to the queue
    TIME_LIMIT = "time limit"  # trained past KFAC_RUN_TIME_LIMIT_S: the run fails


@dataclass
class RunMonitor:
    """Heartbeat, progress and stop signals of one running run, on a daemon thread.

    Use as a context manager around the training; `should_stop` is its `should_stop`, and
    `training_over()` is called as soon as it returns. `shutting_down` says why a worker of
    the run is shutting down (say "this worker is shutting down"), None while none is; the
    run's log then says why and that the run goes back to the queue. `on_stuck` and
    `time_limit_s`: see the module doc.
    """

    run_id: str
    worker_id: str
    database_url: str
    heartbeat_interval: float
    shutting_down: Callable[[], str | None] = lambda: None
    time_limit_s: float | None = None
    on_stuck: Callable[[StopReason], None] | None = None
    grace_s: float = STEP_GRACE_S
    step: int = 0
    reason: StopReason | None = None
    _stopped_at: float = field(default=0.0, init=False, repr=False)
    _training: bool = field(default=True, init=False, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def should_stop(self) -> bool:
        if self.reason is None and (why := self.shutting_down()):
            self._stop(StopReason.SHUTDOWN, f"{why}: the run goes back to the queue")
        return self.reason is not None

    def training_over(self) -> None:
        """The loop has returned: from now on nothing is stuck, whatever takes time."""
        self._training = False

    def __enter__(self) -> RunMonitor:
        self._thread = threading.Thread(
            target=self._loop, name=f"monitor-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _loop(self) -> None:
        started = last_beat = time.monotonic()
        while not self._done.wait(min(POLL_S, self.heartbeat_interval)):
            self.should_stop()  # notices a shutdown while a step runs
            if self._stuck(time.monotonic() - started):
                return
            try:
                if time.monotonic() - last_beat >= self.heartbeat_interval:
                    with session_scope(self.database_url) as session:
                        control = heartbeat(session, self.run_id, self.step, self.worker_id)
                    last_beat = time.monotonic()
                    if control is Control.LOST:
                        self._stop(StopReason.LOST)
                    elif control is Control.CANCEL:
                        self._stop(StopReason.CANCEL)
                else:
                    with session_scope(self.database_url) as session:
                        if is_cancel_requested(session, self.run_id):
                            self._stop(StopReason.CANCEL)
            except Exception as error:  # noqa: BLE001 - the next tick tries again
                logger.warning("run %s: heartbeat / cancel check failed: %s", self.run_id, error)

    def _stuck(self, elapsed: float) -> bool:
        """Call `on_stuck` if the loop has outlived a stop or the time limit by `grace_s`."""
        if self.on_stuck is None or not self._training:
            return False
        now = time.monotonic()
        if self.reason is not None and now - self._stopped_at >= self.grace_s:
            reason = self.reason
        elif self.time_limit_s is not None and elapsed >= self.time_limit_s + self.grace_s:
            reason = StopReason.TIME_LIMIT
        else:
            return False
        logger.warning("run %s: the step in progress outlived the stop (%s)", self.run_id, reason)
        self.on_stuck(reason)
        return True

    def _stop(self, reason: StopReason, what_happens: str | None = None) -> None:
        if self.reason is None:
            logger.info("run %s: %s", self.run_id, what_happens or f"stopping ({reason})")
            self._stopped_at = time.monotonic()
            self.reason = reason
