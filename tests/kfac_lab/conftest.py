"""A real API server (uvicorn in a thread, SQLite) that a test can start late and stop,
for the tracking client's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.api.main import create_app
from backend.settings import Settings
from tests.servers import ThreadedServer

TOKEN = "tracking-test-token"


class Server(ThreadedServer):
    """The API with `settings` on `url`; not listening until `start()`."""

    def __init__(self, settings: Settings):
        super().__init__(lambda: create_app(settings, frontend_dir=settings.home / "frontend"))
        self.settings = settings

    def get(self, path: str) -> dict:
        response = httpx.get(
            self.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, database_url=sqlite_url, admin_token=TOKEN)


@pytest.fixture
def stopped_server(settings: Settings) -> Iterator[Server]:
    server = Server(settings)
    yield server
    server.stop()


@pytest.fixture
def server(stopped_server: Server) -> Server:
    stopped_server.start()
    return stopped_server


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"
