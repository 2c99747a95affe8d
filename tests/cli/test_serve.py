"""`kfac-lab serve` in embedded mode: one command, a URL with the token, a run trained by its
worker, and everything gone after SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from backend.store.db import session_scope
from backend.store.models import Run
from tests.servers import free_port
from tests.worker.labs import REPO, TINY_RUN, WORKER_WAIT_S

pytestmark = [pytest.mark.integration, pytest.mark.slow]


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


def start_serve(home: Path, port: int) -> subprocess.Popen:
    """`kfac-lab serve` on `port` with KFAC_HOME=home (no other KFAC_* variable), in a session
    of its own, its output in home/serve.log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFAC_")}
    with (home / "serve.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
            cwd=REPO,
            env={**env, "KFAC_HOME": str(home), "COLUMNS": "200"},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_serve_runs_the_whole_lab_and_stops_cleanly(tmp_path):
    port = free_port()
    serve = start_serve(tmp_path, port)
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
        deadline = time.monotonic() + WORKER_WAIT_S
        while experiment["status"] != "succeeded":
            assert time.monotonic() < deadline, experiment
            time.sleep(0.2)
            experiment = client.get(f"/api/experiments/{experiment['id']}").json()
        assert len(processes_using(tmp_path)) >= 3  # serve, the worker and its pool child

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(WORKER_WAIT_S) == 0
        deadline = time.monotonic() + WORKER_WAIT_S
        while processes_using(tmp_path):
            assert time.monotonic() < deadline, "the worker outlived serve"
            time.sleep(0.1)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for pid in processes_using(tmp_path):
            os.kill(pid, signal.SIGKILL)


def _wait_for_url(log: Path, serve: subprocess.Popen, timeout: float = WORKER_WAIT_S) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text()
        if match := re.search(r"http://\S+\?token=\S+", text):
            return match.group(0)
        assert serve.poll() is None, f"serve exited:\n{text}"
        assert time.monotonic() < deadline, f"no URL printed:\n{text}"
        time.sleep(0.1)


def test_one_ctrl_c_stops_serve_with_a_run_training_and_a_page_streaming(tmp_path):
    """One SIGINT stops everything cleanly (the run handed back to the queue); an impatient
    second signal changes nothing: exit status 0, no traceback."""
    port = free_port()
    serve = start_serve(tmp_path, port)
    try:
        token = _wait_for_url(tmp_path / "serve.log", serve).split("token=")[1]
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        client = httpx.Client(base_url=base, headers=headers)
        endless = {**TINY_RUN, "steps": 100_000, "checkpoint_interval": None}
        experiment = client.post("/api/experiments", json={"name": "t", "runs": [endless]})
        assert experiment.status_code == 201, experiment.text
        experiment_id = experiment.json()["id"]
        deadline = time.monotonic() + WORKER_WAIT_S
        while client.get(f"/api/experiments/{experiment_id}").json()["status"] != "running":
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        stream = httpx.stream(
            "GET", f"{base}/api/experiments/{experiment_id}/events", headers=headers, timeout=60
        )
        with stream as events:
            assert events.status_code == 200
            serve.send_signal(signal.SIGINT)
            deadline = time.monotonic() + WORKER_WAIT_S
            while "Stopping the worker" not in (tmp_path / "serve.log").read_text():
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.05)
            serve.send_signal(signal.SIGTERM)  # an impatient second signal
            assert serve.wait(WORKER_WAIT_S) == 0, (tmp_path / "serve.log").read_text()
        text = (tmp_path / "serve.log").read_text()
        # The second signal lands during the cleanup (acknowledged) or after it (ignored; the
        # worker may already be gone when the open stream has held the API its 3 s): either way
        # a clean exit, never a traceback.
        assert "_Stop" not in text and "Traceback" not in text.split("Stopping the worker")[-1]
        deadline = time.monotonic() + WORKER_WAIT_S
        while processes_using(tmp_path):
            assert time.monotonic() < deadline, "the worker outlived serve"
            time.sleep(0.1)
        with session_scope(f"sqlite:///{tmp_path / 'kfac.db'}") as session:
            (run,) = session.scalars(select(Run)).all()
            assert (run.status, run.attempts) == ("queued", 0), text  # handed back
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        for pid in processes_using(tmp_path):
            os.kill(pid, signal.SIGKILL)
