"""A tracked run lives as long as its script: the client's heartbeat keeps a quiet script's
run alive, a killed script's run is failed by the recovery pass with the reason, and a script
that comes back afterwards is told so without an exception in its loop."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

import kfac_lab
from backend.settings import Settings
from backend.store.db import session_scope
from backend.store.models import Run
from backend.store.queries import events_after
from kfac_lab.run import Run as TrackedRun
from kfac_lab.sender import Connection, Sender
from kfac_lab.spool import Spool
from tests.kfac_lab.conftest import TOKEN, Server
from worker.recovery import fail_silent_tracked_runs

PATIENCE_S = 120.0  # for conditions that need the other threads/processes to get a turn


def wait_for(condition, what: str, timeout: float = PATIENCE_S):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)
    return value


def recorded_steps(server: Server, run_id: str) -> list[int] | None:
    """The steps of the run's train_loss, None while the run does not exist yet."""
    answer = httpx.get(
        f"{server.url}/api/runs/{run_id}/metrics",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    if answer.status_code == 404:
        return None
    return answer.json()["series"].get("train_loss", {}).get("x")


def heartbeat_at(settings: Settings, run_id: str):
    with session_scope(settings.database_url) as session:
        return session.get(Run, run_id).heartbeat_at


@pytest.fixture
def settings(sqlite_url: str, tmp_path: Path) -> Settings:
    """A server that waits 8 s for news of a run: its clients beat every 2 s."""
    return Settings(
        home=tmp_path, database_url=sqlite_url, admin_token=TOKEN, tracking_timeout_s=8.0
    )


def test_a_quiet_script_s_run_is_kept_alive_by_heartbeats(server: Server, spool: Path):
    run = kfac_lab.init(
        experiment=f"quiet {uuid.uuid4().hex[:6]}", url=server.url, token=TOKEN, spool_dir=spool
    )
    sender = run._sender
    wait_for(lambda: sender._heartbeat_s is not None, "the start to be answered")
    assert sender._heartbeat_s == 2.0  # a quarter of the server's timeout
    started = wait_for(lambda: heartbeat_at(server.settings, run.id), "the run to exist")
    # Nothing is logged, so only a heartbeat can renew the run.
    wait_for(lambda: heartbeat_at(server.settings, run.id) > started, "a heartbeat")
    assert server.get(f"/api/runs/{run.id}")["status"] == "running"
    assert run.finish(timeout=PATIENCE_S)
    assert server.get(f"/api/runs/{run.id}")["status"] == "succeeded"


SCRIPT = textwrap.dedent("""
    import sys, kfac_lab
    run = kfac_lab.init(experiment=sys.argv[1], label="doomed", spool_dir=sys.argv[2])
    run.log(1, train_loss=0.5)
    print(run.id, flush=True)
    sys.stdin.read()  # until the test kills this process
""")


def test_a_killed_script_s_run_fails_and_the_script_coming_back_is_told(
    server: Server, spool: Path, caplog: pytest.LogCaptureFixture
):
    env = {**os.environ, "KFAC_LAB_URL": server.url, "KFAC_LAB_TOKEN": TOKEN}
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, f"killed {uuid.uuid4().hex[:6]}", str(spool)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        run_id = script.stdout.readline().strip()
        wait_for(lambda: recorded_steps(server, run_id) == [1], "step 1 to be recorded")
    finally:
        script.send_signal(signal.SIGKILL)  # no finish, no atexit: the script is gone
        script.wait()
    assert server.get(f"/api/runs/{run_id}")["status"] == "running"

    # The recovery pass (every worker runs it every few seconds) fails it once silent 8 s.
    wait_for(lambda: run_id in fail_silent_tracked_runs(server.settings), "the run to fail")
    run = server.get(f"/api/runs/{run_id}")
    assert (run["status"], run["error"]) == ("failed", "no contact from the script for 8 s")
    with session_scope(server.settings.database_url) as session:
        events = events_after(session, run["experiment_id"], 0)
    assert [e.payload["status"] for e in events if e.kind == "status"][-1] == "failed"

    # The script "comes back" (its process resumed, say): it goes on, told, never raising.
    connection = Connection(server.url, TOKEN)
    back = TrackedRun(run_id, Sender(run_id, Spool(spool / "again"), connection).start())
    with caplog.at_level(logging.WARNING, logger="kfac_lab"):
        back.log(2, train_loss=0.25)
        wait_for(lambda: back.closed_by_server, "the server's refusal")
        for step in range(3, 100):
            back.log(step, train_loss=0.1)
        assert not back.finish(timeout=PATIENCE_S)
    assert "no contact from the script for 8 s" in back.closed_by_server
    told = [r.getMessage() for r in caplog.records if "no longer takes records" in r.getMessage()]
    assert len(told) == 1 and run_id in told[0]
    assert recorded_steps(server, run_id) == [1]
    assert server.get(f"/api/runs/{run_id}")["status"] == "failed"
