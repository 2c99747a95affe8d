"""`kfac-lab run` records its runs for the dashboard: in this machine's store by default, on a
server through the tracking client when KFAC_LAB_URL is set, and not at all with --no-record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from backend import queue
from backend.api.main import create_app
from backend.settings import Settings
from backend.store.db import session_scope
from backend.store.models import Experiment, Run, Snapshot
from backend.store.queries import read_metrics
from backend.store.run_logs import read_log_lines
from tests.api.conftest import FakeBroker
from tests.kfac_lab.conftest import TOKEN, Server
from tests.worker.labs import TINY_RUN, kfac_environment
from worker.cli import app

runner = CliRunner()
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SPEC = {
    "name": "cli recorded",
    "base": {**TINY_RUN, "steps": 12, "snapshot_interval": 6, "probe": {"units": 4}},
    "optimizers": [{"name": "kfac"}, {"name": "sgd"}],
}


def write_spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(SPEC))
    return path


def test_a_cli_run_is_recorded_in_the_local_store(tmp_path: Path):
    database = f"sqlite:///{tmp_path / 'kfac.db'}"
    with kfac_environment({"KFAC_HOME": str(tmp_path), "KFAC_DATABASE_URL": database}):
        result = runner.invoke(app, ["run", str(write_spec(tmp_path))])
    assert result.exit_code == 0, result.output
    with session_scope(database) as session:
        (experiment,) = session.scalars(select(Experiment)).all()
        runs = sorted(experiment.runs, key=lambda run: run.position)
        assert experiment.name == "cli recorded" and experiment.status == "succeeded"
        assert [(run.status, run.step, run.tracked) for run in runs] == [
            ("succeeded", 12, True)
        ] * 2
        assert runs[0].spec["config"]["optimizer"]["name"] == "kfac"
        curves = read_metrics(session, [runs[0].id], ["train_loss"], max_points=100)
        assert list(curves[runs[0].id]["train_loss"]["x"]) == list(range(1, 13))
        snapshots = session.scalar(select(func.count()).select_from(Snapshot))
        assert snapshots == 4  # steps 6 and 12 of both runs
        log = [line["message"] for line in read_log_lines(session, runs[0].id)]
        assert any("starts on cpu" in message for message in log), log


def test_no_record_stores_nothing(tmp_path: Path):
    database = f"sqlite:///{tmp_path / 'kfac.db'}"
    with kfac_environment({"KFAC_HOME": str(tmp_path), "KFAC_DATABASE_URL": database}):
        result = runner.invoke(app, ["run", "--no-record", str(write_spec(tmp_path))])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "kfac.db").exists()


@pytest.mark.slow
def test_with_kfac_lab_url_the_runs_go_to_that_server(sqlite_url: str, tmp_path: Path):
    server = Server(Settings(home=tmp_path, database_url=sqlite_url, admin_token=TOKEN))
    server.start()
    try:
        local = f"sqlite:///{tmp_path / 'local.db'}"
        variables = {
            "KFAC_HOME": str(tmp_path),
            "KFAC_DATABASE_URL": local,
            "KFAC_LAB_URL": server.url,
            "KFAC_LAB_TOKEN": TOKEN,
            "KFAC_LAB_SPOOL": str(tmp_path / "spool"),
        }
        with kfac_environment(variables):
            result = runner.invoke(app, ["run", str(write_spec(tmp_path))])
        assert result.exit_code == 0, result.output
        assert not (tmp_path / "local.db").exists()  # nothing in the local store
        with session_scope(sqlite_url) as session:
            runs = session.scalars(
                select(Run).join(Experiment).where(Experiment.tracking_name == "cli recorded")
            ).all()
            run_ids = [run.id for run in runs if run.status == "succeeded"]
        assert len(run_ids) == 2
        for run_id in run_ids:
            series = server.get(f"/api/runs/{run_id}/metrics")["series"]
            assert series["train_loss"]["x"] == list(range(1, 13))
            assert [s["step"] for s in server.get(f"/api/runs/{run_id}/snapshots")] == [6, 12]
            log = server.get(f"/api/runs/{run_id}/logs")["lines"]
            assert any("starts on cpu" in line["message"] for line in log), log
    finally:
        server.stop()


def test_the_spec_an_experiment_page_offers_runs_as_it_is(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
):
    """The page's "Spec" button downloads `spec` of GET /api/experiments/{id}."""
    broker = FakeBroker()
    monkeypatch.setattr(queue, "send_run", broker.send_run)
    app_ = create_app(Settings(home=tmp_path, database_url=sqlite_url, admin_token=TOKEN))
    spec = {"name": "to download", "base": {**TINY_RUN, "steps": 5}, "seeds": [0, 1]}
    with TestClient(app_) as client:
        created = client.post("/api/experiments", json=spec, headers=ADMIN).json()
        downloaded = client.get(f"/api/experiments/{created['id']}", headers=ADMIN).json()["spec"]
    path = tmp_path / "downloaded.json"
    path.write_text(json.dumps(downloaded))
    with kfac_environment({"KFAC_HOME": str(tmp_path)}):
        result = runner.invoke(app, ["run", "--no-record", str(path)])
    assert result.exit_code == 0, result.output
    assert "to download: 2 runs" in result.output and result.output.count("succeeded") >= 2
