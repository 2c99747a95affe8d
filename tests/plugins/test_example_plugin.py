"""The example plugin end to end: an API server and a worker, each a process with the plugin
installed, train a comparison of its model, dataset and optimizer against a built-in; a worker
without the plugin fails such a run with an error that names what is missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.worker.labs import REPO, WORKER_WAIT_S, Lab, lab

TOKEN = "plugin-test-token"
TERMINAL = {"succeeded", "failed", "diverged", "cancelled"}
SPEC = {
    "name": "spirals",
    "base": {
        "dataset": "two_spirals",
        "model": {"name": "skinny_mlp", "width": 8},
        "batch_size": 64,
        "steps": 30,
        "eval_interval": 10,
        "device": "cpu",
    },
    "optimizers": [{"name": "diag_fisher", "lr": 0.05}, {"name": "sgd_momentum", "lr": 0.1}],
}


@contextmanager
def api_server(the_lab: Lab, pythonpath: str) -> Iterator[httpx.Client]:
    """`uvicorn backend.api.main:app` on the lab's store and broker, as a process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = the_lab.home / "api.log"
    env = {**the_lab.env, "KFAC_ADMIN_TOKEN": TOKEN, "PYTHONPATH": pythonpath}
    command = [sys.executable, "-m", "uvicorn", "backend.api.main:app", "--port", str(port)]
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    try:
        deadline = time.monotonic() + WORKER_WAIT_S
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"the API exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the API did not start:\n{log.read_text()}"
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(30)


def wait_finished(client: httpx.Client, the_lab: Lab, experiment_id: str) -> dict:
    deadline = time.monotonic() + WORKER_WAIT_S
    while True:
        experiment = client.get(f"/api/experiments/{experiment_id}").json()
        if all(run["status"] in TERMINAL for run in experiment["runs"]):
            return experiment
        states = [(r["label"], r["status"], r["step"]) for r in experiment["runs"]]
        assert time.monotonic() < deadline, f"runs not finished: {states}\n{the_lab.logs()}"
        time.sleep(0.2)


def with_plugin(site: Path) -> str:
    return os.pathsep.join([str(site), str(REPO)])


@pytest.mark.slow
def test_a_plugin_trains_through_the_api_and_a_worker(plugin_site: Path, tmp_path: Path):
    pythonpath = with_plugin(plugin_site)
    with lab(tmp_path) as the_lab, api_server(the_lab, pythonpath) as client:
        the_lab.start_worker(PYTHONPATH=pythonpath)
        schema = client.get("/openapi.json").text
        assert "diag_fisher" in schema and "skinny_mlp" in schema and "two_spirals" in schema
        datasets = {d["name"]: d for d in client.get("/api/datasets").json()}  # the form's marks
        spirals = datasets["two_spirals"]
        assert (spirals["package"], spirals["availability"]) == (
            "kfac-lab-example-plugin",
            "built_in",
        )
        created = client.post("/api/experiments", json=SPEC)
        assert created.status_code == 201, created.text
        experiment = wait_finished(client, the_lab, created.json()["id"])
        runs = {run["optimizer"]["name"]: run for run in experiment["runs"]}
        assert {name: run["status"] for name, run in runs.items()} == {
            "diag_fisher": "succeeded",
            "sgd_momentum": "succeeded",
        }, the_lab.logs()
        series = client.get(f"/api/runs/{runs['diag_fisher']['id']}/metrics").json()["series"]
        loss = series["train_loss"]["y"]
        assert len(loss) == 30 and loss[-1] < loss[0]
        assert "mean_diag_fisher" in series  # the plugin optimizer's diagnostics, recorded


@pytest.mark.slow
def test_a_worker_without_the_plugin_fails_the_run_naming_it(plugin_site: Path, tmp_path: Path):
    with lab(tmp_path) as the_lab, api_server(the_lab, with_plugin(plugin_site)) as client:
        the_lab.start_worker()  # no plugin on this worker
        created = client.post(
            "/api/experiments", json={**SPEC, "optimizers": SPEC["optimizers"][:1]}
        )
        assert created.status_code == 201, created.text
        (run,) = wait_finished(client, the_lab, created.json()["id"])["runs"]
        assert run["status"] == "failed"
        assert "unknown dataset 'two_spirals': no installed plugin provides it" in run["error"]


def test_the_api_refuses_a_plugin_it_lacks_with_422():
    """In this process the plugin is not installed (the spec is built at import)."""
    from fastapi.testclient import TestClient

    from backend.api.main import create_app
    from backend.settings import Settings

    app = create_app(Settings(admin_token=TOKEN, database_url="sqlite:///:memory:"))
    with TestClient(app) as client:
        response = client.post(
            "/api/experiments", json=SPEC, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert response.status_code == 422, response.text
    messages = " ".join(error["msg"] for error in response.json()["detail"])
    assert "unknown dataset 'two_spirals'" in messages
