"""The tracking client against a real server: a script's metrics, K-FAC internals and
curvature snapshots reach the pages; nothing is lost while the server is down; nothing raises
into the training loop."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import kfac_lab
from kfac import KFAC
from kfac.snapshot import optimizer_damping, snapshot_payload
from kfac_lab import sender as sender_module
from kfac_lab.sender import Sender
from kfac_lab.system import SystemSampler
from tests.imports import imported_after
from tests.kfac_lab.conftest import TOKEN, Server


def start(server: Server, spool: Path, experiment: str | None = None, **fields) -> kfac_lab.Run:
    return kfac_lab.init(
        experiment=experiment or f"client {uuid.uuid4().hex[:8]}",
        url=server.url,
        token=TOKEN,
        spool_dir=spool,
        **fields,
    )


def tiny_problem(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    x = torch.randn(64, 6)
    y = torch.randint(0, 3, (64,))
    return model, x, y


def test_a_script_reports_curves_internals_and_a_snapshot(server: Server, spool: Path):
    model, x, y = tiny_problem()
    optimizer = KFAC(model, "cross_entropy", lr=None, damping=1.0, stats_interval=1)
    run = start(server, spool, label="kfac", config={"optimizer": "kfac", "damping": 1.0})
    run.watch(optimizer)
    for step in range(1, 21):
        loss = optimizer.step(x, y)
        run.log(step, train_loss=float(loss))
    run.snapshot(model, x, y, loss="cross_entropy", optimizer=optimizer)
    expected = snapshot_payload(
        model, x, y, "cross_entropy", probe=1024, damping=optimizer_damping(optimizer, 0.0)
    )
    assert run.finish(timeout=120)

    detail = server.get(f"/api/runs/{run.id}")
    assert (detail["status"], detail["step"], detail["label"]) == ("succeeded", 20, "kfac")
    assert detail["optimizer"]["name"] == "kfac"
    series = server.get(f"/api/runs/{run.id}/metrics")["series"]
    assert series["train_loss"]["x"] == list(range(1, 21))
    assert set(optimizer.diagnostics) <= set(series)  # λ, α, μ ... as for a worker's K-FAC run
    assert detail["final_metrics"]["train_loss"] == pytest.approx(series["train_loss"]["y"][-1])

    (listed,) = server.get(f"/api/runs/{run.id}/snapshots")
    assert listed["step"] == 20
    stored = server.get(f"/api/snapshots/{listed['id']}")
    assert stored["blocks"] == expected["blocks"]
    for name in ("exact", "kronecker", "kronecker_inverse", "block_diagonal_inverse"):
        np.testing.assert_allclose(
            np.array(stored["matrices"][name]), expected["matrices"][name], rtol=1e-4, atol=1e-6
        )


def test_runs_of_one_name_group_together(server: Server, spool: Path):
    name = f"group {uuid.uuid4().hex[:8]}"
    runs = [start(server, spool, experiment=name, label=label) for label in ("a", "b")]
    for run in runs:
        run.log(1, train_loss=1.0)
        assert run.finish(timeout=120)
    experiments = {server.get(f"/api/runs/{run.id}")["experiment_id"] for run in runs}
    (experiment_id,) = experiments
    experiment = server.get(f"/api/experiments/{experiment_id}")
    # Each run's sender thread creates it on its own: either may reach the server first.
    assert sorted(r["label"] for r in experiment["runs"]) == ["a", "b"]
    assert experiment["status"] == "succeeded"


def test_server_down_then_up_loses_nothing(stopped_server: Server, spool: Path):
    run = start(stopped_server, spool)
    for step in range(500):
        run.log(step, train_loss=1.0 / (step + 1), lr=0.1)
    sender: Sender = run._sender
    sender._wake.set()
    wait_for(lambda: sender.spool.files(), "the spool to receive the records")
    stopped_server.start()
    assert run.finish(timeout=120)
    series = stopped_server.get(f"/api/runs/{run.id}/metrics?max_points=10000")["series"]
    assert series["train_loss"]["x"] == list(range(500))
    assert series["lr"]["x"] == list(range(500))
    assert stopped_server.get(f"/api/runs/{run.id}")["status"] == "succeeded"
    assert not (spool / run.id).exists()  # sent: the spool is gone


def test_sync_sends_what_an_unfinished_wait_left(stopped_server: Server, spool: Path):
    run = start(stopped_server, spool)
    run.log(3, train_loss=0.5)
    assert not run.finish(timeout=0.5)  # the server is down: it all waits on disk
    assert (spool / run.id).is_dir()
    stopped_server.start()
    assert kfac_lab.sync(stopped_server.url, TOKEN, spool) == [run.id]
    assert stopped_server.get(f"/api/runs/{run.id}")["status"] == "succeeded"
    assert stopped_server.get(f"/api/runs/{run.id}/metrics")["series"]["train_loss"]["y"] == [0.5]


def test_an_exception_fails_the_run_with_its_traceback(server: Server, spool: Path):
    with pytest.raises(RuntimeError), start(server, spool) as run:
        run.log(1, train_loss=2.0)
        raise RuntimeError("out of memory, say")
    detail = server.get(f"/api/runs/{run.id}")
    assert detail["status"] == "failed"
    assert "RuntimeError: out of memory, say" in detail["error"]
    assert "Traceback" in detail["error"]
    (line,) = server.get(f"/api/runs/{run.id}/logs")["lines"]  # and in the run's log
    assert line["level"] == "ERROR" and line["message"] == detail["error"]


def test_log_lines_reach_the_run_s_log_in_order(stopped_server: Server, spool: Path):
    run = start(stopped_server, spool)
    for i in range(600):  # more than one request's worth, sent while the server is down
        run.log_text(f"line {i}", "warning" if i == 7 else "INFO")
    run.log_text("a\x00b", level="not a level")
    stopped_server.start()
    assert run.finish(timeout=120)
    lines = stopped_server.get(f"/api/runs/{run.id}/logs")["lines"]
    assert [line["message"] for line in lines] == [*(f"line {i}" for i in range(600)), "ab"]
    assert [line["seq"] for line in lines] == list(range(601))
    assert lines[7]["level"] == "WARNING" and lines[600]["level"] == "INFO"


def test_bad_values_never_raise_and_good_ones_arrive(server: Server, spool: Path):
    run = start(server, spool, config={"lr": float("nan"), "path": Path("/data")})
    run.log(1, train_loss=float("nan"), note="text", ok=1.0)
    run.log(2, **{"bad name!": 1.0, "ok": 2.0})
    run.log(np.int64(3), ok=torch.tensor(3.0))
    run.log(-1, ok=9.0)
    run.log("four", ok=9.0)
    run.snapshot(object(), None, None)  # not a model: logged, not raised
    assert run.finish(timeout=120)
    series = server.get(f"/api/runs/{run.id}/metrics")["series"]
    assert series == {"ok": {"x": [1, 2, 3], "y": [1.0, 2.0, 3.0]}}
    detail = server.get(f"/api/runs/{run.id}")
    assert detail["status"] == "succeeded"
    assert detail["spec"]["config"] == {"lr": None, "path": "/data"}


def test_importing_the_client_imports_no_torch_web_or_database_library():
    """Nor pydantic: the wire contract it shares with the server is pure Python."""
    assert imported_after(["kfac_lab"], ["torch", "fastapi", "sqlalchemy", "pydantic"]) == []


def test_init_without_a_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KFAC_LAB_URL", raising=False)
    with pytest.raises(ValueError, match="KFAC_LAB_URL"):
        kfac_lab.init(experiment="x")


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.05)


def test_a_tracked_run_records_where_it_ran(server: Server, spool: Path):
    run = start(server, spool)
    assert run.finish(timeout=120)
    provenance = server.get(f"/api/runs/{run.id}")["provenance"]
    assert provenance["python"] and provenance["host"] and provenance["kfac_lab"]
    assert provenance["torch"] == torch.__version__  # loaded here, so it is recorded


def test_system_metrics_go_with_the_latest_step(
    server: Server, spool: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sender_module, "SystemSampler", partial(SystemSampler, interval=0.0))
    run = start(server, spool)
    for step in range(1, 4):
        run.log(step, train_loss=1.0)
        wait_for(lambda s=step: run._sender._last_step == s, f"step {step} to be drained")
    assert run.finish(timeout=120)
    series = server.get(f"/api/runs/{run.id}/metrics")["series"]
    assert set(series["cpu_percent"]["x"]) <= {1, 2, 3} and series["rss_mb"]["y"][0] > 1
