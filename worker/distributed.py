"""One run over several ranks (`RunSpec.processes` on each of `RunSpec.nodes` workers):
data-parallel ranks under torch.distributed.

Rank 0 is the process that took the run (the Celery task, or the CLI): it hosts the c10d
TCPStore the ranks rendezvous through, trains with the run's recorder, and alone evaluates,
snapshots and checkpoints.  On each node (worker) the first rank is the worker's own process
and the node's other ranks are started here as `python -m worker.distributed` processes (as
torchrun starts its ranks: Celery's pool children are daemonic and may not have
multiprocessing children); node k holds the global ranks k·P … k·P + P − 1 (P = processes).
They run the same loop (worker.training) on their shards with nothing to record.  A resumed
run's state is read from rank 0's checkpoint and broadcast to every rank
(worker.training), so the other nodes need no access to rank 0's disk.

Across workers (`nodes` > 1; the Celery side is worker/nodes.py): rank 0 publishes its
store's port through the broker the lab already uses — one `kfac.join_run` task per other
node, carrying the run's claim and rank 0's address — and waits `join_timeout_s` for every
node to sign in (a key `node/k` in the store, taken with compare-and-set, so a node is joined
once).  A node that never joins fails the run, the reason naming it; a cancel while waiting
ends it `cancelled`.  A worker busy with a run reserves no other task (late ack, prefetch 1),
so each node task goes to a distinct free worker.

A warm shutdown hands the run back whichever node's worker stops.  Node 0's worker stops the
run like any (worker/tasks.py: the run goes back to the queue) and leaves its group, so the
other nodes end at once, as at a cancel.  Another node's worker asks rank 0 to hand the run
back (the key `HAND_BACK_KEY` in the store, set between two steps) and trains on until rank 0,
which reads the key at its next stop check, ends the run for every rank: a node that left by
itself would fail the run instead.

Failure and cancellation: every collective has the process group's timeout
(`COLLECTIVE_TIMEOUT_S`; gloo also fails at once when a peer's socket closes), so a rank that
dies makes rank 0's step raise and the run ends `failed`, its reason naming the local rank
that died.  When rank 0's loop ends for any reason (finished, cancelled, diverged, failed)
its group is destroyed, so every other rank's next collective fails and its node ends; on
each node the local ranks are joined for `JOIN_TIMEOUT_S` and killed after that: nothing
outlives the run.  A rank whose rank 0 died is left blocked in a collective until the
timeout, then exits.

Backend: one rule, `kfac.distributed.backend_for` (gloo on CPU, NCCL on CUDA, rank r on GPU
r mod count).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist

from backend.spec import RunSpec
from kfac.distributed import ProcessGroupCommunicator, backend_for
from worker.run_types import MemoryRecorder, Recorder, RunControls, RunResult
from worker.training import CANCELLED_REASON, resolve_device, train

logger = logging.getLogger(__name__)

HAND_BACK_KEY = "hand back"  # set by a node whose worker shuts down; its value says why
COLLECTIVE_TIMEOUT_S = 120.0  # a step's collective waits at most this long for a lost peer
JOIN_TIMEOUT_S = 30.0  # how long the other ranks get to finish after rank 0's loop ends
LOCAL_HOST = "127.0.0.1"  # the store as the ranks on rank 0's own node reach it


@dataclass
class Rendezvous:
    """How rank 0 brings the other nodes of a run in: `invite(port)` asks them to join its
    store (worker/nodes.py sends their tasks), and they have `join_timeout_s` to do so.
    `hand_back(why)` is called once if one of them asks for the run to be handed back (its
    worker is shutting down; `why` says which): rank 0 then stops the run as at a cancel, and
    the caller, told so, says why in the run's log and puts it back in the queue."""

    invite: Callable[[int], None]
    join_timeout_s: float
    hand_back: Callable[[str], None] = lambda why: None


class _Discard(MemoryRecorder):
    """The recorder of ranks 1..N−1: rank 0 records the run; these keep nothing."""

    def metrics(self, points) -> None:
        pass


def node_key(node: int) -> str:
    """The store key a node signs in under (its worker's id is the value)."""
    return f"node/{node}"


def _join_group(store: dist.Store, rank: int, spec: RunSpec) -> ProcessGroupCommunicator:
    backend = backend_for(resolve_device(spec.device))
    if backend == "nccl":  # NCCL's object collectives use the current device
        torch.cuda.set_device(resolve_device(spec.device, rank))
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=spec.world_size,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    return ProcessGroupCommunicator()


def _client_store(host: str, port: int, spec: RunSpec) -> dist.TCPStore:
    return dist.TCPStore(
        host,
        port,
        spec.world_size,
        is_master=False,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )


def main(argv: list[str] | None = None) -> None:
    """Rank r of a run, not the first of its node: join the store, train its shards, record
    nothing."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--host", default=LOCAL_HOST, help="where rank 0's store listens")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--spec", required=True, help="the run spec as JSON")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    spec = RunSpec.model_validate(json.loads(args.spec))
    communicator = _join_group(_client_store(args.host, args.port, spec), args.rank, spec)
    try:
        controls = RunControls(data_dir=args.data_dir)
        result = train(spec, _Discard(), controls, communicator=communicator)
        logger.info("rank %d: %s at step %d", args.rank, result.status, result.step)
    finally:
        dist.destroy_process_group()


def _start_rank(
    rank: int, spec: RunSpec, host: str, port: int, threads: int, data: Path | None
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "worker.distributed",
        f"--rank={rank}",
        f"--host={host}",
        f"--port={port}",
        f"--threads={threads}",
        f"--spec={spec.model_dump_json()}",
    ]
    command += [f"--data-dir={data}"] if data else []
    return subprocess.Popen(command)


def _start_node_ranks(
    spec: RunSpec, node: int, host: str, port: int, data_dir: Path | None
) -> tuple[list[subprocess.Popen], int]:
    """The node's ranks after its first, started; and the threads each of them gets."""
    threads = max(1, torch.get_num_threads() // spec.processes)
    first = node * spec.processes
    ranks = [
        _start_rank(first + local, spec, host, port, threads, data_dir)
        for local in range(1, spec.processes)
    ]
    return ranks, threads


def train_ranks(
    spec: RunSpec, recorder: Recorder, controls: RunControls, rendezvous: Rendezvous | None = None
) -> RunResult:
    """Train `spec` over its `world_size` ranks, this process being rank 0 (see the module
    doc); returns rank 0's outcome, failed with the reason when another rank died."""
    if spec.nodes > 1 and rendezvous is None:
        reason = f"a run over {spec.nodes} nodes needs the lab's workers: submit it to the lab"
        return RunResult("failed", 0, reason)
    store = dist.TCPStore(
        LOCAL_HOST,
        0,
        spec.world_size,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    ranks, threads = _start_node_ranks(spec, 0, LOCAL_HOST, store.port, controls.data_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    result: RunResult | None = None
    try:
        if spec.nodes > 1:
            should_stop = _or_when_a_node_leaves(store, controls.should_stop, rendezvous.hand_back)
            controls = replace(controls, should_stop=should_stop)
            rendezvous.invite(store.port)
            result = _await_nodes(store, spec, should_stop, rendezvous.join_timeout_s)
        if result is None:
            result = _train_in_group(store, 0, spec, recorder, controls)
    finally:
        torch.set_num_threads(previous_threads)
        dead = _stop_ranks(ranks, 1, wait=result is not None and result.status == "succeeded")
    if result.status == "failed" and dead:
        result.reason = f"{'; '.join(dead)}; rank 0: {result.reason}"
    return result


def _train_in_group(
    store: dist.Store, rank: int, spec: RunSpec, recorder, controls: RunControls
) -> RunResult:
    """This process's rank of the run, in the process group; failed if the group never
    formed (a rank did not start)."""
    try:
        communicator = _join_group(store, rank, spec)
        try:
            return train(spec, recorder, controls, communicator=communicator)
        finally:
            dist.destroy_process_group()
    except Exception as error:
        logger.exception("the process group did not form")
        if not dist.is_initialized():
            _forget_unformed_group()
        return RunResult("failed", 0, f"{type(error).__name__}: {error}")


def _forget_unformed_group() -> None:
    """Let this process form a process group again after one failed to form.

    torch.distributed names an unnamed group by a per-process counter (its key prefix in the
    store), which only destroying a formed group resets; a worker's pool process that was a
    rank of a group that never formed would name its next run's group differently from the
    fresh ranks it meets there, and wait for keys nobody writes."""
    dist.distributed_c10d._world.group_count = 0


def _or_when_a_node_leaves(
    store: dist.TCPStore, should_stop: Callable[[], bool], hand_back: Callable[[str], None]
) -> Callable[[], bool]:
    """Rank 0's `should_stop` for a run over nodes: it also stops the run, handed back, once
    another node has asked for it (`HAND_BACK_KEY`, see the module doc)."""
    asked = False

    def stop() -> bool:
        nonlocal asked
        if not asked and store.check([HAND_BACK_KEY]):
            asked = True
            hand_back(store.get(HAND_BACK_KEY).decode())
        return should_stop() or asked  # should_stop first: it learns the reason

    return stop


def _await_nodes(
    store: dist.TCPStore, spec: RunSpec, should_stop: Callable[[], bool], timeout_s: float
) -> RunResult | None:
    """None once every other node has signed in; the run's outcome if one never does or the
    run is cancelled meanwhile."""
    deadline = time.monotonic() + timeout_s
    missing = list(range(1, spec.nodes))
    while True:
        missing = [node for node in missing if not store.check([node_key(node)])]
        if not missing:
            return None
        if should_stop():
            return RunResult("cancelled", 0, CANCELLED_REASON)
        if time.monotonic() > deadline:
            names = ", ".join(map(str, missing))
            reason = (
                f"node {names} of {spec.nodes} did not join within {timeout_s:g} s "
                "(no free worker on the run's queue took it)"
            )
            return RunResult("failed", 0, reason)
        time.sleep(0.2)


def train_node(
    spec: RunSpec,
    node: int,
    host: str,
    port: int,
    member: str,
    data_dir: Path | None,
    stopping: Callable[[], bool] = lambda: False,
) -> RunResult | None:
    """Node `node` > 0 of a run whose rank 0 hosts its store at host:port: sign in as
    `member` (a worker id), train the node's ranks, record nothing.  None if the node was
    joined already (a second message for it).  Once `stopping()` (its worker shuts down), the
    node asks rank 0 to hand the run back, and ends `cancelled` with that reason when rank 0
    has ended the run."""
    store = _client_store(host, port, spec)
    if store.compare_set(node_key(node), "", member) != member.encode():
        return None
    ranks, threads = _start_node_ranks(spec, node, host, port, data_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    leaving = _HandBackRequest(store, node, stopping)
    result: RunResult | None = None
    try:
        controls = RunControls(data_dir=data_dir, should_stop=leaving)
        result = _train_in_group(store, node * spec.processes, spec, _Discard(), controls)
    finally:
        torch.set_num_threads(previous_threads)
        first = node * spec.processes + 1
        _stop_ranks(ranks, first, wait=result is not None and result.status == "succeeded")
    if leaving.asked and result.status != "succeeded":
        return RunResult("cancelled", result.step, f"{leaving.reason}; rank 0 hands the run back")
    return result


@dataclass
class _HandBackRequest:
    """The `should_stop` of a node other than node 0: never stops the node's loop by itself
    (rank 0 ends the run for every rank), but once `stopping()` asks rank 0, through the
    store, to hand the run back."""

    store: dist.Store
    node: int
    stopping: Callable[[], bool]
    asked: bool = False

    @property
    def reason(self) -> str:
        return f"node {self.node}'s worker is shutting down"

    def __call__(self) -> bool:
        if not self.asked and self.stopping():
            self.store.set(HAND_BACK_KEY, self.reason)
            self.asked = True
            logger.info("%s: asked rank 0 to hand the run back", self.reason)
        return False


def _stop_ranks(ranks: list[subprocess.Popen], first: int, wait: bool) -> list[str]:
    """Join the node's other ranks (global ranks `first`, …; for JOIN_TIMEOUT_S after a
    success, at once otherwise), kill what is left, and describe the ranks that had died by
    themselves."""
    died = [
        _describe(rank, process.returncode)
        for rank, process in enumerate(ranks, first)
        if process.poll() not in (None, 0)
    ]
    for process in ranks:
        if wait:
            with suppress(subprocess.TimeoutExpired):
                process.wait(JOIN_TIMEOUT_S)
        if process.poll() is None:
            process.kill()
        process.wait()
    return died


def _describe(rank: int, exitcode: int) -> str:
    if exitcode < 0:
        with suppress(ValueError):
            return f"rank {rank} was killed by {signal.Signals(-exitcode).name}"
    return f"rank {rank} exited with code {exitcode}"


if __name__ == "__main__":
    main()
