"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, against the real lab.

The `server` fixture starts `kfac-lab serve` exactly as a user does — API, pages and one worker
process, SQLite and the filesystem broker in a temporary KFAC_HOME — on a free port, with a
fixed admin token. Every test talks to it through the browser only, except where a test seeds
the store directly to get a known amount of data (the performance test).

Screenshots go to `<--output>/screenshots/` (pytest-playwright's output folder, `test-results`
by default); with KFAC_UPDATE_SCREENSHOTS=1 they are also copied to docs/screenshots/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.support import ROOT, PageWatch, Screenshots, Server, sign_in
from tests.conftest import missing_service
from tests.servers import free_port
from tests.worker.labs import WORKER_WAIT_S

CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = "browser-test-admin-token"
START_TIMEOUT_S = WORKER_WAIT_S  # serve starts a worker, which imports torch

# Two cores shared by the server, its worker (training) and the browser: be patient.
expect.set_options(timeout=15_000)


@pytest.fixture(scope="session")
def browser_type_launch_args() -> dict:
    """Debian's Chromium, headless (Playwright never fetches a browser of its own here)."""
    if not Path(CHROMIUM).exists():
        missing_service("Chromium", f"{CHROMIUM} is not installed (apt-get install chromium)")
    return {
        "executable_path": CHROMIUM,
        "headless": True,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ],
    }


def _wait_until_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kfac-lab serve exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"kfac-lab serve did not become ready:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The whole embedded lab (`kfac-lab serve`: API + pages + a worker) on a free port."""
    home = tmp_path_factory.mktemp("kfac-home")
    port = free_port()
    env = {**os.environ, "KFAC_HOME": str(home), "KFAC_ADMIN_TOKEN": ADMIN_TOKEN}
    for name in ("KFAC_DATABASE_URL", "KFAC_BROKER_URL", "KFAC_PUBLIC_URL"):
        env.pop(name, None)
    log = home / "serve.log"
    command = [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, process, log)
        yield Server(url=url, token=ADMIN_TOKEN, home=home)
    finally:
        process.send_signal(signal.SIGINT)  # serve stops its worker, then itself
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict, server: Server) -> dict:
    return {
        **browser_context_args,
        "base_url": server.url,
        "viewport": {"width": 1400, "height": 1000},
    }


@pytest.fixture
def owner_page(context: BrowserContext, server: Server) -> Iterator[tuple[Page, PageWatch]]:
    """A page of a browser that opened the start-up URL, watched for errors."""
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(context, server)
    watch = PageWatch()
    page = watch.attach(context.new_page())
    yield page, watch
    watch.assert_clean()


@pytest.fixture(scope="session")
def screenshots(pytestconfig: pytest.Config) -> Screenshots:
    return Screenshots(Path(pytestconfig.getoption("--output")).absolute() / "screenshots")
