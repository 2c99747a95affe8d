"""A real API server (uvicorn on a free port, SQLite) that a test can start late and stop,
for the tracking client's end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from backend.api.main import create_app
from backend.settings import Settings

TOKEN = "tracking-test-token"
START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """The API on `url`; not listening until `start()`."""

    def __init__(self, settings: Settings, port: int):
        self.settings = settings
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        app = create_app(self.settings, frontend_dir=self.settings.home / "frontend")
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn exited while starting"
            assert time.monotonic() < deadline, f"uvicorn did not start in {START_TIMEOUT_S} s"
            time.sleep(0.02)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=30)
            self._server = None

    def get(self, path: str) -> dict:
        response = httpx.get(
            self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, database_url=sqlite_url, admin_token=TOKEN)


@pytest.fixture
def stopped_server(settings: Settings) -> Iterator[Server]:
    server = Server(settings, free_port())
    yield server
    server.stop()


@pytest.fixture
def server(stopped_server: Server) -> Server:
    stopped_server.start()
    return stopped_server


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"
