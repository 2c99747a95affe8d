"""Real services that a fault test can break and mend: a Redis server of its own, a TCP proxy in
front of PostgreSQL, an API process, and a stream reader that behaves like the page's EventSource.

Every one of them is a real process or a real socket, so the programs under test meet the same
errors as in production: a refused connection, a connection reset in the middle of a query, a
stream cut off without a goodbye.
"""

from __future__ import annotations

import base64
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from backend.store.db import session_scope
from backend.store.queries import events_after
from tests.servers import free_port
from tests.worker.labs import REPO, wait_for

REDIS_SERVER = "/usr/bin/redis-server"
TOKEN = "fault-test-admin-token"  # KFAC_ADMIN_TOKEN of the API processes


def store_ids(url: str, experiment_id: str, after: int) -> list[int]:
    """The ids of an experiment's events after `after`, from the store's event log."""
    with session_scope(url) as session:
        return [event.id for event in events_after(session, experiment_id, after, limit=None)]


# --- Redis -------------------------------------------------------------------------------------


def waiting_runs(client: redis.Redis) -> list[str]:
    """The run ids of the messages still queued or delivered but not acknowledged."""
    messages = client.lrange("cpu", 0, -1) + list(client.hvals("unacked"))
    runs = []
    for raw in messages:
        message = json.loads(raw)
        payload = message[0] if isinstance(message, list) else message  # unacked: [msg, ...]
        args, _kwargs, _embed = json.loads(base64.b64decode(payload["body"]))
        runs.append(args[0])
    return runs


@dataclass
class RedisServer:
    """A private `redis-server` with an append-only file in `folder`, stopped and started again
    on the same port. A SIGTERM makes Redis write its AOF before exiting, as on a clean restart
    of a production broker."""

    folder: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arguments = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        arguments += ["--appendonly", "yes", "--dir", str(self.folder)]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [REDIS_SERVER, *arguments], stdout=log, stderr=subprocess.STDOUT
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: self._answers(client), timeout, "redis-server to answer")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _answers(self, client: redis.Redis) -> bool:
        assert self.process.poll() is None, (self.folder / "redis.log").read_text()
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False


# --- a proxy that can play a database outage -----------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`, byte for byte, on threads.

    `cut()` plays an outage: the listening socket is closed (new connections are refused) and
    every forwarded connection is reset; `mend()` listens on the same port again. `reset()`
    plays a blip: open connections are reset, new ones get through.
    """

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self._down = threading.Event()
        self._listening = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        wait_for(self._listening.is_set, 60, "the proxy to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self.cut()
        self._thread.join(5)

    def cut(self) -> None:
        self._down.set()
        wait_for(lambda: not self._listening.is_set(), 60, "the proxy to stop listening")
        self.reset()

    def reset(self) -> None:
        """Reset every forwarded connection (a blip: new ones still get through)."""
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            _close(connection)

    def mend(self) -> None:
        self._down.clear()
        wait_for(self._listening.is_set, 60, "the proxy to listen again")

    def _serve(self) -> None:
        """The accept loop; it alone opens and closes the listening socket."""
        listener: socket.socket | None = None
        while not self._closed.is_set():
            if self._down.is_set():
                if listener is not None:
                    listener.close()
                    listener = None
                    self._listening.clear()
                time.sleep(0.02)
                continue
            if listener is None:
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(64)
                self._listening.set()
            if select.select([listener], [], [], 0.05)[0]:
                client, _ = listener.accept()
                self._forward(client)
        if listener is not None:
            listener.close()
            self._listening.clear()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        for sock in (client, upstream):
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._connections |= {client, upstream}
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections -= {source, sink}
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# --- the API as a process -------------------------------------------------------------------------


@dataclass
class ApiServer:
    """The API as deployed, `kfac-lab serve --no-worker` (uvicorn with the production graceful
    shutdown), with the lab's KFAC_* variables, on a fixed port so that clients find it again
    after a restart."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        command = [sys.executable, "-m", "worker.cli", "serve", "--no-worker"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._answers, timeout, "the API to answer")

    def kill(self) -> None:
        """SIGKILL, as when its machine or container dies: no stream gets a goodbye."""
        if self.process is not None:
            with suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, as a deploy does; SIGKILL if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        self.kill()

    def _answers(self) -> bool:
        assert self.process.poll() is None, f"the API exited:\n{self.log.read_text()[-3000:]}"
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


# --- a page's event stream ------------------------------------------------------------------------


class PageStream:
    """Reads an experiment's event stream on a thread, as the page does (frontend/js/live.js,
    EventSource's reconnection with `fetch`): opened once after the event where the page's data
    ends (`?last_event_id=`; the page sends a `Last-Event-ID` header, which the server reads
    the same way) with the token in the `Authorization` header, it keeps that URL and, when
    the connection drops, reconnects after the server's `retry` delay with a `Last-Event-ID`
    header naming the last event received. It gives up for good on an answer that is not a
    200 event stream, and stops at an `end` event (live.js closes the stream then).
    """

    def __init__(self, base_url: str, experiment_id: str, token: str, last_event_id: int):
        self.url = f"{base_url}/api/experiments/{experiment_id}/events"
        self.params = {"last_event_id": last_event_id}
        self.auth = {"Authorization": f"Bearer {token}"}
        self.events: list[dict[str, str]] = []  # id, event, data
        self.connections = 0
        self.dropped: list[str] = []  # why each connection ended, for the test's messages
        self.failure: str | None = None  # why it gave up, as EventSource closes
        self._last_id: str | None = None
        self._retry_s = 3.0  # EventSource's usual default until the server says otherwise
        self._socket: socket.socket | None = None  # of the open connection
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="page-stream", daemon=True)

    def __enter__(self) -> PageStream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        if self._socket is not None:  # wake the read that waits for the next event
            with suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        self._thread.join(10)

    def ids(self) -> list[int]:
        return [int(event["id"]) for event in self.events]

    def _read(self) -> None:
        timeout = httpx.Timeout(5.0, read=30.0)  # longer than the server's keep-alive period
        with httpx.Client(timeout=timeout) as client:
            while not self._closed.is_set() and self.failure is None:
                headers = dict(self.auth)
                if self._last_id is not None:
                    headers["Last-Event-ID"] = self._last_id
                try:
                    with client.stream("GET", self.url, params=self.params, headers=headers) as r:
                        kind = r.headers.get("content-type", "")
                        if r.status_code != 200 or not kind.startswith("text/event-stream"):
                            self.failure = f"{r.status_code} {kind}: {r.read()[:300]!r}"
                            return
                        self.connections += 1
                        self._socket = r.extensions["network_stream"].get_extra_info("socket")
                        self._consume(r.iter_lines())
                        self.dropped.append("the server closed the stream")
                except httpx.TransportError as error:
                    self.dropped.append(repr(error))
                self._closed.wait(self._retry_s)

    def _consume(self, lines: Iterator[str]) -> None:
        event: dict[str, str] = {}
        for line in lines:
            if self._closed.is_set():
                return
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")
                continue
            if "retry" in event:
                self._retry_s = int(event["retry"]) / 1000
            if "id" in event:
                self._last_id = event["id"]
            if event.get("event") == "end":
                self.failure = f"the server ended the stream: {event.get('data')}"
                return
            if "data" in event:
                self.events.append(event)
            event = {}
