"""A run over two data-parallel processes through a real worker (worker/distributed.py).

The worker's pool child is rank 0; rank 1 is a `python -m worker.distributed` child in the
worker's process group, found here by its command line.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.api.schemas import RunOut
from backend.store.db import session_scope
from backend.store.writes import request_cancel
from tests.worker.labs import Lab, assert_same_trajectory, lab, run_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LONG = dict(steps=100_000, eval_interval=None, checkpoint_interval=None)
TWO_RANKS = dict(processes=2, optimizer={"name": "kfac", "inverse_interval": 5})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab(tmp_path_factory.mktemp("distributed")) as the_lab:
        the_lab.start_worker()
        yield the_lab


def helper_ranks(the_lab: Lab) -> list[int]:
    """The pids of the ranks > 0 in the worker's process group."""
    group = the_lab.workers[0].process.pid  # the worker leads its own session and group
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != group:
                continue
            command = (entry / "cmdline").read_bytes()
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
        if b"worker.distributed" in command:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("optimizer", [TWO_RANKS["optimizer"], {"name": "sgd_momentum", "lr": 0.1}])
def test_a_two_process_run_records_on_rank_0_and_matches_one_process(embedded: Lab, optimizer):
    two, one = embedded.create(
        run_spec(processes=2, optimizer=optimizer, dtype="float64"),
        run_spec(optimizer=optimizer, dtype="float64"),
    )
    embedded.send(two, one)
    runs = embedded.wait(two, one, timeout=600)
    for run in runs:
        assert (run.status, run.step, run.error) == ("succeeded", 30, None), embedded.logs()
    losses = [embedded.points(run.id) for run in runs]
    assert [step for step, _ in losses[0]] == list(range(1, 31))  # each step stored once
    for (_, ours), (_, theirs) in zip(*losses, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-6)
    for name in ("step_time_rank0", "step_time_rank1", "step_time_slowest_rank"):
        assert len(embedded.points(two, name)) == 30
    assert helper_ranks(embedded) == []  # rank 1 ended with the run
    assert [RunOut.from_run(run).processes for run in runs] == [2, 1]  # what the page shows


def test_k_fac_reports_its_communication(embedded: Lab) -> None:
    two, one = embedded.create(
        run_spec(**TWO_RANKS, steps=5), run_spec(steps=5, **{"optimizer": TWO_RANKS["optimizer"]})
    )
    embedded.send(two, one)
    embedded.wait(two, one, timeout=600)
    assert len(embedded.points(two, "communication_bytes_all_reduced")) == 5
    assert all(v > 0 for _, v in embedded.points(two, "communication_bytes_all_reduced"))
    assert embedded.points(one, "communication_bytes_all_reduced") == []  # no series of zeros


def test_cancel_stops_every_rank(embedded: Lab) -> None:
    (run_id,) = embedded.create(run_spec(**TWO_RANKS, **LONG))
    embedded.send(run_id)
    embedded.wait_for(lambda: embedded.points(run_id), 300, "the first points")
    assert len(helper_ranks(embedded)) == 1
    with session_scope(embedded.url) as session:
        assert request_cancel(session, run_id) == "running"
    (run,) = embedded.wait(run_id, timeout=120)
    assert run.status == "cancelled" and run.error == "cancelled on request"
    embedded.wait_for(lambda: not helper_ranks(embedded), 60, "rank 1 to end")


def test_a_killed_rank_fails_the_run_with_a_reason(embedded: Lab) -> None:
    (run_id,) = embedded.create(run_spec(**TWO_RANKS, **LONG))
    embedded.send(run_id)
    embedded.wait_for(lambda: embedded.points(run_id), 300, "the first points")
    (helper,) = helper_ranks(embedded)
    os.kill(helper, signal.SIGKILL)
    (run,) = embedded.wait(run_id, timeout=300)  # gloo notices the closed socket at once
    assert run.status == "failed", embedded.logs()
    assert run.error.startswith("rank 1 was killed by SIGKILL; rank 0: "), run.error
    assert 0 < run.step < LONG["steps"]
    # the worker goes on: the next run trains
    (after,) = embedded.create(run_spec())
    embedded.send(after)
    assert embedded.wait(after, timeout=300)[0].status == "succeeded"


RESUMABLE = dict(
    processes=2, optimizer=TWO_RANKS["optimizer"], dtype="float64", steps=1000,
    model={"name": "mlp", "hidden": [32]}, checkpoint_interval=100, eval_interval=None,
)  # fmt: skip


def test_a_killed_worker_s_two_process_run_resumes_with_the_same_trajectory(
    embedded: Lab, tmp_path
) -> None:
    """SIGKILL the worker (rank 0 and rank 1 with it) after a checkpoint; another worker
    finds the stale heartbeat and resumes the run from rank 0's checkpoint, both ranks from
    the same state, to the trajectory of an uninterrupted two-process run (trained by the
    module's worker meanwhile: the same in any lab)."""
    (reference,) = embedded.create(run_spec(**RESUMABLE))
    embedded.send(reference)
    with lab(tmp_path, KFAC_HEARTBEAT_TIMEOUT_S="2") as the_lab:
        (killed,) = the_lab.create(run_spec(**RESUMABLE))
        first = the_lab.start_worker()
        the_lab.send(killed)
        the_lab.wait_for_checkpoint(killed, 100)
        first.kill()
        assert helper_ranks(the_lab) == []  # rank 1 died with its worker
        assert the_lab.run(killed).status == "running"
        assert 100 <= the_lab.points(killed)[-1][0] < 1000

        the_lab.start_worker()
        (resumed,) = the_lab.wait(killed, timeout=600)
        assert (resumed.status, resumed.attempts) == ("succeeded", 2), the_lab.logs()
        assert "resumed from the checkpoint of step" in the_lab.workers[1].text()
        curve = the_lab.points(killed)
    (uninterrupted,) = embedded.wait(reference, timeout=600)
    assert uninterrupted.status == "succeeded", embedded.logs()
    assert_same_trajectory(curve, embedded.points(reference), RESUMABLE["steps"])
