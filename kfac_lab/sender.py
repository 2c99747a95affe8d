"""The background thread that takes a run's records to the server.

The training thread only appends to an in-memory deque (`Sender.queue`), which costs about a
microsecond. Every `FLUSH_S` the sender thread drains it: log entries become metric points
(non-finite values and entries that are not numbers are dropped, as the worker drops them),
batched by `MAX_BATCH_POINTS`, and every request goes to the run's spool on disk, in the order
the script made them; then it sends the spool's files oldest first. A failed send (server
down, slow, 5xx, a wrong token) is retried with exponential backoff up to `RETRY_MAX_S`,
while new records keep going to disk; a request the server refuses for good (4xx: invalid) is
set aside in the spool's `rejected/` with the reason, never retried for ever. Nothing here
raises into the training thread.

Liveness: the server fails a run it has not heard from for its tracking timeout (the start's
answer says how long: `contact_timeout_s`). Every request renews the run; when there has been
nothing to send for a while, the thread sends a light heartbeat instead, so a run lives exactly
as long as its script's process. A 409 means the server has ended the run (it was silent too
long, e.g. the machine slept) and takes no more records: the thread says so once on the
`kfac_lab` logger, sets `closed_by_server`, keeps the requests still spooled in `rejected/`
and drops what the script logs afterwards.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from typing import Any

from backend.tracking_protocol import (
    MAX_BATCH_LINES,
    MAX_BATCH_POINTS,
    METRIC_NAME,
    as_step,
    run_path,
)
from kfac_lab.spool import Spool
from kfac_lab.system import SystemSampler

logger = logging.getLogger("kfac_lab")

FLUSH_S = 0.25
REQUEST_TIMEOUT_S = 30.0
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 30.0
RETRY_MAX_CLOSING_S = 1.0  # while `finish` waits, notice a server that is back within a second
# Refusals that a later attempt may overcome: a timeout, too many requests, a wrong token that
# the user may fix before `kfac_lab.sync()`; every other 4xx means the request is invalid.
RETRY_STATUSES = {401, 403, 408, 425, 429}
ENDED_STATUS = 409  # the run has ended on the server and takes no more records
HEARTBEAT_MAX_S = 30.0  # idle heartbeats: at most this far apart, and 4 within the timeout


@dataclass(frozen=True)
class Request:
    """A request other than a metric batch, in the order the script made it."""

    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LogLine:
    """A line for the run's log (`Run.log_text`), numbered by the run from 0."""

    seq: int
    time: float  # unix time
    level: str
    message: str


@dataclass(frozen=True)
class SystemSample:
    """CPU % and memory at the step of the latest log call; it names that step, it does not
    make one (so it never moves the sender's latest step back)."""

    step: int
    time: float  # seconds since the run started
    values: dict[str, float]


class Permanent(Exception):
    """The server refused the request for good, with HTTP `status`."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class Connection:
    """POSTs JSON to the lab's API with the admin token, by the standard library alone."""

    @classmethod
    def configured(cls, url: str | None, token: str | None) -> Connection:
        """To `url` (default `KFAC_LAB_URL`) with `token` (default `KFAC_LAB_TOKEN`)."""
        url = url or os.environ.get("KFAC_LAB_URL")
        if not url:
            raise ValueError("kfac_lab needs the lab's URL: pass url= or set KFAC_LAB_URL")
        return cls(url, token or os.environ.get("KFAC_LAB_TOKEN"))

    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, allow_nan=False).encode()
        request = urllib.request.Request(
            self.url + path, data=data, headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = error.read()[:2000].decode(errors="replace")
            if 400 <= error.code < 500 and error.code not in RETRY_STATUSES:
                raise Permanent(error.code, _detail(detail)) from None
            raise ConnectionError(f"HTTP {error.code}: {detail}") from None


class Sender:
    """Drains `queue` into `spool` and the spool to the server, on a daemon thread."""

    def __init__(self, run_id: str, spool: Spool, connection: Connection):
        self.run_id = run_id
        self.spool = spool
        self.connection = connection
        self.queue: deque[tuple[int, float, dict[str, Any]] | Request | LogLine] = deque()
        self.system = SystemSampler()  # this thread lives in the script's process: sample it
        self.started = time.perf_counter()  # wall times are seconds since then
        self._last_step: int | None = None  # of the latest log call, which samples go with
        self.cancel_requested = False
        self.closed_by_server: str | None = None  # why the server takes no more records
        self._heartbeat_s: float | None = None  # known once the run's start is answered
        self._last_contact = time.monotonic()
        self._wake = threading.Event()
        self._closing = False
        self._done = threading.Event()
        self._delay = RETRY_FIRST_S
        self._retry_at = 0.0
        # The spool is the thread's, but `close` drains the queue itself when the thread is
        # stuck in a slow request; the lock keeps their file operations apart.
        self._spool_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="kfac-lab-sender", daemon=True)

    def start(self) -> Sender:
        self.spool.claim()
        self._thread.start()
        return self

    def close(self, timeout: float) -> bool:
        """Send everything queued (the last request included) within `timeout` seconds; True
        if the server has it all. Otherwise it stays in the spool for `kfac_lab.sync()`."""
        self._closing = True
        self._retry_at = 0.0
        self._wake.set()
        self._thread.join(timeout)
        self._done.set()
        self._wake.set()
        self._thread.join(5.0)
        self._drain()  # whatever the thread had no time for goes to disk at least
        sent = self.spool.empty() and self.closed_by_server is None
        if self._thread.is_alive():  # stuck in a request: the thread still owns the spool
            return False
        self.spool.release()
        if sent or self.closed_by_server is not None:  # nothing left that could be sent
            self.spool.discard_if_done()  # (keeps `rejected/`)
        else:
            logger.warning(
                "kfac_lab: the server did not take everything in %.0f s; %d requests wait in "
                "%s, and kfac_lab.sync() sends them",
                timeout,
                len(self.spool.files()),
                self.spool.directory,
            )
        return sent

    # -- the thread --
    def _loop(self) -> None:
        while not self._done.is_set():
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            try:
                self._drain()
                self._sample_system()
                drained = self._send_all()
                if drained and not self._closing:
                    self._beat_if_idle()
            except Exception:  # noqa: BLE001 - the thread must survive anything
                logger.exception("kfac_lab: sender error")
                drained = False
            if self._closing and drained and not self.queue:
                return

    def _sample_system(self) -> None:
        """CPU %, RSS (kfac_lab.system) at the latest logged step, at the sampler's rate."""
        if self._closing:  # the run has ended (and sampling now would never let it drain)
            return
        if self._last_step is not None and (values := self.system.sample()):
            self.queue.append(
                SystemSample(self._last_step, time.perf_counter() - self.started, values)
            )

    def _drain(self) -> None:
        """Move everything queued to the spool, in order; log entries become batches."""
        with self._spool_lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        if self.closed_by_server is not None:  # nobody would take them (see `_refused`)
            self.queue.clear()
            return
        points: list[list[Any]] = []
        lines: list[list[Any]] = []
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, LogLine):
                lines.append([item.seq, item.time, item.level, item.message])
            elif isinstance(item, SystemSample):
                points.extend(_points(item.step, item.time, item.values))
            elif isinstance(item, Request):
                self._spool_points(points)
                self._spool_lines(lines)
                points, lines = [], []
                self._put(item.path, item.body)
            else:
                points.extend(_points(*item))
                if (step := as_step(item[0])) is not None:
                    self._last_step = step
        self._spool_points(points)
        self._spool_lines(lines)

    def _spool_lines(self, lines: list[list[Any]]) -> None:
        for start in range(0, len(lines), MAX_BATCH_LINES):
            batch = lines[start : start + MAX_BATCH_LINES]
            self._put(run_path(self.run_id, "logs"), {"lines": batch})

    def _spool_points(self, points: list[list[Any]]) -> None:
        for start in range(0, len(points), MAX_BATCH_POINTS):
            batch = points[start : start + MAX_BATCH_POINTS]
            self._put(run_path(self.run_id, "metrics"), {"points": batch})

    def _put(self, path: str, body: dict[str, Any]) -> bool:
        if self.spool.put(path, body):
            return True
        logger.warning("kfac_lab: the spool %s is full; a record is lost", self.spool.directory)
        return False

    def _send_all(self) -> bool:
        """Send spooled requests oldest first; True once the spool is empty."""
        if time.monotonic() < self._retry_at:
            return False
        while True:
            with self._spool_lock:
                oldest = self.spool.oldest()
            if oldest is None:
                return True
            path, request = oldest
            if self.closed_by_server is not None:
                with self._spool_lock:
                    self.spool.reject(path, self.closed_by_server)
                continue
            try:
                answer = self.connection.post(request["path"], request["body"])
            except Permanent as error:
                self._refused(error)
                with self._spool_lock:
                    self.spool.reject(path, str(error))
                continue
            except (OSError, ValueError) as error:  # refused, reset, timeout, 5xx, bad JSON
                cap = RETRY_MAX_CLOSING_S if self._closing else RETRY_MAX_S
                self._delay = min(2 * self._delay, cap)
                self._retry_at = time.monotonic() + self._delay
                logger.info("kfac_lab: sending failed (%s); retrying in %.1f s", error, self._delay)
                return False
            with self._spool_lock:
                self.spool.remove(path)
            self._delay = RETRY_FIRST_S
            self._answered(answer)

    def _answered(self, answer: dict[str, Any]) -> None:
        """What a successful request tells: the script has been heard from now; a cancel from
        the page; after the start, how long the server waits for news of the run."""
        self._last_contact = time.monotonic()
        if answer.get("cancel_requested"):
            self.cancel_requested = True
        timeout = answer.get("contact_timeout_s")
        if isinstance(timeout, int | float) and timeout > 0:
            self._heartbeat_s = max(FLUSH_S, min(HEARTBEAT_MAX_S, timeout / 4))

    def _beat_if_idle(self) -> None:
        """A heartbeat when nothing has been sent for `_heartbeat_s` (none before the start is
        answered: there is no run to keep alive yet). A failed one is simply tried again at
        the next interval; the records themselves are what must not be lost."""
        if self._heartbeat_s is None or self.closed_by_server is not None:
            return
        if time.monotonic() - self._last_contact < self._heartbeat_s:
            return
        try:
            answer = self.connection.post(run_path(self.run_id, "heartbeat"), {})
        except Permanent as error:
            self._refused(error)
            return
        except (OSError, ValueError) as error:
            self._last_contact = time.monotonic()  # next try one interval later
            logger.info("kfac_lab: heartbeat failed (%s)", error)
            return
        self._answered(answer)

    def _refused(self, error: Permanent) -> None:
        """A 409: the server has ended the run; say so once and stop sending."""
        if error.status != ENDED_STATUS or self.closed_by_server is not None:
            return
        self.closed_by_server = error.detail
        logger.warning(
            "kfac_lab: the lab no longer takes records of run %s: %s. What the script logs "
            "from now on is dropped; what was waiting to be sent is kept in %s.",
            self.run_id,
            error.detail,
            self.spool.directory / "rejected",
        )


def _detail(body: str) -> str:
    """The server's message: the `detail` of its JSON error body, else the body itself."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body
    return detail if isinstance(detail, str) else body


def _points(step: Any, wall_time: float, metrics: dict[str, Any]) -> list[list[Any]]:
    """`[name, step, wall_time, value]` of one log call. Values that are not finite numbers,
    names the server refuses and negative steps are left out (JSON has no NaN, and the server
    would refuse the whole batch)."""
    step = as_step(step)
    if step is None:
        return []
    out = []
    for name, value in metrics.items():
        if not METRIC_NAME.fullmatch(name):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out.append([name, step, wall_time, number])
    return out
