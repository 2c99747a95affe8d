"""One run across two workers (`nodes: 2`, worker/nodes.py and worker/distributed.py).

Two real `kfac-lab worker` processes share one lab on this machine, as two machines share a
database and a broker; rank 0's store is published at 127.0.0.1 (KFAC_NODE_ADDRESS) and the
ranks talk over gloo.  The worker that takes the run is node 0; the other must take node 1's
task, since a worker busy with a run reserves nothing more.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import torch.distributed as dist
from sqlalchemy import select

from backend.api.schemas import RunOut
from backend.store.db import session_scope
from backend.store.models import Event
from backend.store.run_logs import read_log_lines
from backend.store.writes import claim_run, release_run, request_cancel
from tests.worker.labs import (
    TERMINAL,
    WORKER_WAIT_S,
    Lab,
    Worker,
    assert_same_trajectory,
    lab,
    run_spec,
)
from worker import nodes
from worker.distributed import _await_nodes, node_key, train_ranks
from worker.nodes import join_node
from worker.run_types import MemoryRecorder, RunControls, RunResult

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOIN_TIMEOUT_S = 45  # generous: a free worker takes a node's task within a second when idle
KFAC = {"name": "kfac", "inverse_interval": 5}


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    settings = dict(KFAC_NODE_ADDRESS="127.0.0.1", KFAC_NODE_JOIN_TIMEOUT_S=str(JOIN_TIMEOUT_S))
    with lab(tmp_path_factory.mktemp("nodes"), **settings) as the_lab:
        the_lab.start_worker()
        the_lab.start_worker()
        yield the_lab


def logged(the_lab: Lab, pattern: str) -> bool:
    return any(re.search(pattern, worker.text()) for worker in the_lab.workers)


def roles(the_lab: Lab, run_id: str) -> tuple[Worker, Worker]:
    """(the worker that trains the run as node 0, the one that joined it as node 1)."""
    (first,) = [w for w in the_lab.workers if f"run {run_id} starts" in w.text()]
    (other,) = [w for w in the_lab.workers if w is not first]
    return first, other


@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_across_two_workers_follows_one_process(two_workers: Lab, processes: int) -> None:
    """nodes × processes ranks at B/(nodes·processes) each: the trajectory of one process
    at B; rank 0 (node 0) records every rank's step time."""
    spec = dict(optimizer=KFAC, dtype="float64")
    (spread,) = two_workers.create(run_spec(nodes=2, processes=processes, **spec))
    two_workers.send(spread)
    (run,) = two_workers.wait(spread, timeout=600)
    assert (run.status, run.step, run.error) == ("succeeded", 30, None), two_workers.logs()
    (alone,) = two_workers.create(run_spec(**spec))
    two_workers.send(alone)
    (reference,) = two_workers.wait(alone, timeout=600)
    assert reference.status == "succeeded", two_workers.logs()

    ours, theirs = two_workers.points(spread), two_workers.points(alone)
    assert [step for step, _ in ours] == list(range(1, 31))
    for (_, a), (_, b) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, rel=1e-6)
    world = 2 * processes
    for rank in range(world):
        assert len(two_workers.points(spread, f"step_time_rank{rank}")) == 30
    assert two_workers.points(spread, f"step_time_rank{world}") == []

    shown = RunOut.from_run(run)  # what the page's runs table shows
    assert (shown.nodes, shown.processes) == (2, processes)
    node0, node1 = roles(two_workers, spread)
    assert f"run {spread}: joins as node 1 of 2" in node1.text()
    # Node 1 logs its end after rank 0 has recorded the run's: on a busy machine, a moment later.
    ended = f"run {spread}: node 1 ended: succeeded at step 30"
    two_workers.wait_for(lambda: ended in node1.text(), WORKER_WAIT_S, "node 1's end")
    assert f"run {spread}: joins" not in node0.text()


def test_a_node_that_never_joins_fails_the_run_with_a_reason(two_workers: Lab) -> None:
    """Three nodes, two workers: the third node's task finds no free worker in time."""
    (run_id,) = two_workers.create(run_spec(nodes=3, optimizer=KFAC))
    two_workers.send(run_id)
    (run,) = two_workers.wait(run_id, timeout=JOIN_TIMEOUT_S + 300)
    assert run.status == "failed", two_workers.logs()
    assert re.fullmatch(
        rf"node [12] of 3 did not join within {JOIN_TIMEOUT_S} s "
        r"\(no free worker on the run's queue took it\)",
        run.error,
    ), run.error
    # The node that had joined ends with rank 0; the late node's task, taken once a worker
    # is free, finds the attempt over and trains nothing.
    for pattern, what in [
        (rf"run {run_id}: node [12] ended: failed", "the joined node to end"),
        (rf"run {run_id}: node [12] of attempt 1 is not wanted now", "the late node's task"),
    ]:
        two_workers.wait_for(lambda p=pattern: logged(two_workers, p), 300, what)
    # Both workers are free again, and their processes form a group again: the one that had
    # joined the group that never formed once numbered its next group apart from the others.
    (after,) = two_workers.create(run_spec(nodes=2))
    two_workers.send(after)
    (run,) = two_workers.wait(after, timeout=300)
    assert run.status == "succeeded", two_workers.logs()


def test_cancel_stops_every_node(two_workers: Lab) -> None:
    long = dict(steps=100_000, eval_interval=None, checkpoint_interval=None)
    (run_id,) = two_workers.create(run_spec(nodes=2, optimizer=KFAC, **long))
    two_workers.send(run_id)
    two_workers.wait_for(lambda: two_workers.points(run_id), 300, "the first points")
    with session_scope(two_workers.url) as session:
        assert request_cancel(session, run_id) == "running"
    (run,) = two_workers.wait(run_id, timeout=120)
    assert (run.status, run.error) == ("cancelled", "cancelled on request")
    _, node1 = roles(two_workers, run_id)
    two_workers.wait_for(
        lambda: re.search(rf"run {run_id}: node 1 ended: failed", node1.text()),
        180,
        "node 1 to end",
    )


@pytest.mark.timeout(1200)  # three workers start, and two runs over two nodes train
def test_a_run_whose_node_0_is_killed_resumes_on_two_other_workers(
    tmp_path, uninterrupted_curve: list[tuple[int, float]]
) -> None:
    """SIGKILL node 0's worker after a checkpoint: node 1's rank fails at once and its worker
    is free again; the run's stale heartbeat re-queues it, and the new attempt's node 0 (the
    freed worker or a new one) reads the checkpoint and broadcasts it to its node 1, ending on
    the trajectory of an uninterrupted run over two nodes."""
    settings = dict(
        KFAC_NODE_ADDRESS="127.0.0.1",
        KFAC_NODE_JOIN_TIMEOUT_S=str(JOIN_TIMEOUT_S),
        KFAC_HEARTBEAT_TIMEOUT_S="2",
    )
    with lab(tmp_path, **settings) as the_lab:
        killed = resumable_run_past_its_first_checkpoint(the_lab)
        node0, node1 = roles(the_lab, killed)
        node0.kill()
        assert the_lab.run(killed).status == "running"
        assert 100 <= the_lab.points(killed)[-1][0] < RESUMABLE_STEPS
        the_lab.wait_for(
            lambda: f"run {killed}: node 1 ended: failed" in node1.text(), 300, "node 1"
        )
        the_lab.start_worker()

        (resumed,) = the_lab.wait(killed, timeout=600)
        assert (resumed.status, resumed.attempts) == ("succeeded", 2), the_lab.logs()
        assert logged(the_lab, rf"run {killed}: joins as node 1 of 2 \(attempt 2")
        assert_same_trajectory(the_lab.points(killed), uninterrupted_curve, RESUMABLE_STEPS)


RESUMABLE_STEPS = 800


def resumable_run() -> dict:
    """A float64 K-FAC run over two nodes, long enough to be interrupted after its first
    checkpoint (every 100 steps) and still be training."""
    return run_spec(
        nodes=2, optimizer=KFAC, dtype="float64", steps=RESUMABLE_STEPS, eval_interval=None,
        model={"name": "mlp", "hidden": [32]}, checkpoint_interval=100,
    )  # fmt: skip


def resumable_run_past_its_first_checkpoint(the_lab: Lab) -> str:
    """Two workers, and a `resumable_run` sent to them once its first checkpoint is written;
    its id.  Created only when sent: the recovery pass sends a queued run that has waited a
    heartbeat timeout, and a reference waiting in the queue must not keep a worker from node
    1's task."""
    the_lab.start_worker()
    the_lab.start_worker()
    (run_id,) = the_lab.create(resumable_run())
    the_lab.send(run_id)
    the_lab.wait_for_checkpoint(run_id, 100)
    return run_id


@pytest.fixture(scope="module")
def uninterrupted_curve(two_workers: Lab) -> list[tuple[int, float]]:
    """The curve of a `resumable_run` trained over two nodes without interruption: the
    same in any lab, so the resume tests share it."""
    (reference,) = two_workers.create(resumable_run())
    two_workers.send(reference)
    (uninterrupted,) = two_workers.wait(reference, timeout=600)
    assert uninterrupted.status == "succeeded", two_workers.logs()
    return two_workers.points(reference)


def statuses(the_lab: Lab, run_id: str) -> list[str]:
    """The run's status changes, in order, from the experiment's event log."""
    with session_scope(the_lab.url) as session:
        payloads = session.scalars(select(Event.payload).where(Event.kind == "status"))
        return [p["status"] for p in payloads if p["run_id"] == run_id]


def run_log(the_lab: Lab, run_id: str) -> str:
    with session_scope(the_lab.url) as session:
        return "\n".join(line["message"] for line in read_log_lines(session, run_id))


@pytest.mark.timeout(1200)  # three workers start, and two runs over two nodes train
@pytest.mark.parametrize(
    ("stopped", "why"),
    [(0, "this worker is shutting down"), (1, "node 1's worker is shutting down")],
    ids=["node 0", "node 1"],
)
def test_a_warm_shutdown_of_either_node_s_worker_hands_the_run_back(
    tmp_path, uninterrupted_curve: list[tuple[int, float]], stopped: int, why: str
) -> None:
    """SIGTERM to the worker of node `stopped` after a checkpoint: that worker ends by itself
    without waiting for the run, which goes back to `queued` (its attempt not counted), says
    why in its log, and is taken again by the other worker, whose ranks were stopped for it.
    It waits there for a second worker, which joins it as node 1: the run resumes from the
    checkpoint and ends on the trajectory of an uninterrupted run over two nodes."""
    # Node 0 of the run handed back waits for a new worker to start: generously.
    settings = dict(KFAC_NODE_ADDRESS="127.0.0.1", KFAC_NODE_JOIN_TIMEOUT_S=str(WORKER_WAIT_S))
    with lab(tmp_path, **settings) as the_lab:
        handed = resumable_run_past_its_first_checkpoint(the_lab)
        workers = roles(the_lab, handed)
        asked = time.monotonic()
        assert workers[stopped].stop(timeout=WORKER_WAIT_S) == 0, the_lab.logs()
        # One worker is left, so the run cannot have ended: the stopped one took none of it.
        assert the_lab.run(handed).status not in TERMINAL, the_lab.logs()
        # Node 0 hands the run back once its ranks have left, maybe after node 1's worker ended.
        the_lab.wait_for(
            lambda: len(statuses(the_lab, handed)) > 1, WORKER_WAIT_S, "the run's hand-back"
        )
        assert statuses(the_lab, handed)[:2] == ["running", "queued"]
        told = f"run {handed}: {why}: the run goes back to the queue"
        assert told in run_log(the_lab, handed), run_log(the_lab, handed)
        starts = f"run {handed} starts (attempt 1)"
        the_lab.wait_for(
            lambda: sum(w.text().count(starts) for w in the_lab.workers) == 2,
            WORKER_WAIT_S,
            "the other worker to take the run again",
        )  # its ranks were stopped: it is free
        print(f"\nfrom SIGTERM to the run taken again: {time.monotonic() - asked:.1f} s")

        the_lab.start_worker()
        (resumed,) = the_lab.wait(handed, timeout=600)
        assert (resumed.status, resumed.attempts) == ("succeeded", 1), the_lab.logs()
        assert statuses(the_lab, handed) == ["running", "queued", "running", "succeeded"]
        assert re.search(r"resumed from the checkpoint of step [1-7]00", run_log(the_lab, handed))
        assert_same_trajectory(the_lab.points(handed), uninterrupted_curve, RESUMABLE_STEPS)


def test_an_invitation_left_from_a_claim_handed_back_is_dropped_unopened(tmp_path, monkeypatch):
    """Node 0's worker stops while node 1's invitation waits in the queue: the run is handed
    back and claimed again under the same attempt number.  The leftover invitation is dropped
    as stale before it reaches for its store (gone with the old claim: trying would hold the
    worker for the store's timeout); the new claim's invitation goes on to join."""
    joined = []

    def train_node(spec, node, address, port, *rest):
        joined.append((node, address, port))
        return RunResult("succeeded", spec.steps)

    monkeypatch.setattr(nodes, "train_node", train_node)
    with lab(tmp_path) as the_lab:
        (run_id,) = the_lab.create(run_spec(nodes=2))
        with session_scope(the_lab.url) as session:
            old = claim_run(session, run_id, "host:1").claim_id  # node 0's worker, which stops
        with session_scope(the_lab.url) as session:
            assert release_run(session, run_id)
        with session_scope(the_lab.url) as session:
            run = claim_run(session, run_id, "host:2")
            attempt, new = run.attempts, run.claim_id
        assert attempt == 1 and new != old

        def join(claim: str, port: int) -> str:
            invitation = (run_id, attempt, claim, 1, "127.0.0.1", port)
            return join_node(*invitation, the_lab.settings, "host:3")

        assert join(old, port=1111) == "stale"
        assert joined == []
        assert join(new, port=2222) == "succeeded"
        assert joined == [(1, "127.0.0.1", 2222)]


def test_a_run_over_nodes_needs_the_lab_s_workers() -> None:
    """`kfac-lab run` trains in its own process: it has no workers to invite."""
    result = train_ranks(run_spec(nodes=2), MemoryRecorder(), RunControls(resume=False))
    assert (result.status, result.step) == ("failed", 0)
    assert result.reason == "a run over 2 nodes needs the lab's workers: submit it to the lab"


def test_rank_0_waits_for_the_nodes_until_cancelled_or_timed_out() -> None:
    """Without workers: a cancel ends the wait `cancelled`, the timeout `failed` naming the
    nodes that did not sign in; a node that signed in is not named."""
    store = dist.TCPStore("127.0.0.1", 0, 3, is_master=True, wait_for_workers=False)
    spec = run_spec(nodes=3)
    cancelled = _await_nodes(store, spec, lambda: True, timeout_s=60)
    assert (cancelled.status, cancelled.reason) == ("cancelled", "cancelled on request")
    store.set(node_key(1), "host:1")
    timed_out = _await_nodes(store, spec, lambda: False, timeout_s=0.5)
    assert (timed_out.status, timed_out.step) == ("failed", 0)
    assert timed_out.reason.startswith("node 2 of 3 did not join within 0.5 s")
    store.set(node_key(2), "host:2")
    assert _await_nodes(store, spec, lambda: False, timeout_s=0.5) is None
