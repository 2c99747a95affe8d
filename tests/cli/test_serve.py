"""`kfac-lab serve` in embedded mode: one command, a URL with the token, a run trained by its
worker, and everything gone after SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.worker.labs import REPO, TINY_RUN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_using(home: Path) -> list[int]:
    """Pids of the processes whose environment has KFAC_HOME=home (serve, worker, children)."""
    marker = f"KFAC_HOME={home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_serve_runs_the_whole_lab_and_stops_cleanly(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFAC_")}
    log = (tmp_path / "serve.log").open("w+")
    serve = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env={**env, "KFAC_HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = _wait_for_url(tmp_path / "serve.log", serve)
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        token = url.split("token=")[1]
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        )
        assert client.get("/healthz").status_code == 200
        created = client.post("/api/experiments", json={"name": "t", "runs": [TINY_RUN]})
        assert created.status_code == 201, created.text
        experiment = created.json()
        deadline = time.monotonic() + 120
        while experiment["status"] != "succeeded":
            assert time.monotonic() < deadline, experiment
            time.sleep(0.2)
            experiment = client.get(f"/api/experiments/{experiment['id']}").json()
        assert len(processes_using(tmp_path)) >= 3  # serve, the worker and its pool child

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
        deadline = time.monotonic() + 10
        while processes_using(tmp_path):
            assert time.monotonic() < deadline, "the worker outlived serve"
            time.sleep(0.1)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for pid in processes_using(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _wait_for_url(log: Path, serve: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text()
        if match := re.search(r"http://\S+\?token=\S+", text):
            return match.group(0)
        assert serve.poll() is None, f"serve exited:\n{text}"
        assert time.monotonic() < deadline, f"no URL printed:\n{text}"
        time.sleep(0.1)
