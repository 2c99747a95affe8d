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


class Permanent(Exception):
    """The server refused the request for good."""


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
                raise Permanent(f"HTTP {error.code}: {detail}") from None
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
        sent = self.spool.empty()
        if self._thread.is_alive():  # stuck in a request: the thread still owns the spool
            return False
        self.spool.release()
        if sent:
            self.spool.discard_if_done()
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
            self.queue.append((self._last_step, time.perf_counter() - self.started, values))

    def _drain(self) -> None:
        """Move everything queued to the spool, in order; log entries become batches."""
        with self._spool_lock:
            self._drain_locked()

    def _drain_locked(self) -> None:
        points: list[list[Any]] = []
        lines: list[list[Any]] = []
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, LogLine):
                lines.append([item.seq, item.time, item.level, item.message])
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
            try:
                answer = self.connection.post(request["path"], request["body"])
            except Permanent as error:
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
            if answer.get("cancel_requested"):
                self.cancel_requested = True


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
