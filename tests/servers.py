"""Servers that tests start: a port no other socket takes meanwhile, and the API served by
uvicorn in a thread of the test process.

A port found by binding port 0 and closing the probe lies in the kernel's ephemeral range,
from which the kernel also picks the local port of every outgoing connection (to PostgreSQL,
Redis, the API, ...). Between the probe's close and the server's bind, such a connection can
take it, and the server fails with "address already in use" — rarely, and more often the
busier the machine. So a server in this process listens on a socket bound once, kept from the
start; a server in another process gets a port below the ephemeral range, where only another
server could take it.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI

START_TIMEOUT_S = 120.0  # uvicorn's start-up in a thread, on a machine at load ~10 and more
STOP_TIMEOUT_S = 30.0
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000


def free_port() -> int:
    """A local port that nothing listens on now, outside the ephemeral range (see the module
    doc), for a server that another process starts."""
    lowest_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    for _ in range(200):
        port = random.randrange(LOWEST_PORT, lowest_ephemeral)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in [{LOWEST_PORT}, {lowest_ephemeral})")


class ThreadedServer:
    """The app `make_app()` served by uvicorn in a thread, on a socket bound at creation.

    The URL is known (and the port this server's) before `start`; until then connections are
    refused, as by a server that is down. `make_app` runs at `start`: an app lives in the event
    loop of the thread that serves it.
    """

    def __init__(self, make_app: Callable[[], FastAPI]):
        self._make_app = make_app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))  # bound, not listening: refused until `start`
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app: FastAPI | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.app = self._make_app()
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn exited while starting"
            assert time.monotonic() < deadline, f"uvicorn did not start in {START_TIMEOUT_S} s"
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=STOP_TIMEOUT_S)
            self._server = None
        self._socket.close()
