"""One run over N processes (`RunSpec.processes`): data-parallel ranks under torch.distributed.

Rank 0 is the process that took the run (the Celery task, or the CLI): it hosts the c10d
TCPStore the ranks rendezvous through, trains with the run's recorder, and alone evaluates,
snapshots and checkpoints.  Ranks 1..N−1 are started here as `python -m worker.distributed`
processes (as torchrun starts its ranks: Celery's pool children are daemonic and may not
have multiprocessing children) and run the same loop (worker.training) on their shards with
nothing to record; a
checkpoint written by rank 0 holds the state of every rank (kfac.distributed keeps them
identical), so every rank resumes from it.

Failure and cancellation: every collective has the process group's timeout
(`COLLECTIVE_TIMEOUT_S`; gloo also fails at once when a peer's socket closes), so a rank that
dies makes rank 0's step raise and the run ends `failed`, its reason naming the rank that
died.  When rank 0's loop ends for any reason (finished, cancelled, diverged, failed) the
other ranks are joined for `JOIN_TIMEOUT_S` and killed after that: nothing outlives the run.
A helper whose rank 0 died is left blocked in a collective until the timeout, then exits.

Backend: gloo on CPU, NCCL when the run's device is a GPU (rank r on GPU r mod count).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch
import torch.distributed as dist

from backend.spec import RunSpec
from kfac.distributed import ProcessGroupCommunicator
from worker.run_types import MemoryRecorder, Recorder, RunResult
from worker.training import resolve_device, train

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT_S = 120.0  # a step's collective waits at most this long for a lost peer
JOIN_TIMEOUT_S = 30.0  # how long the other ranks get to finish after rank 0's loop ends


class _Discard(MemoryRecorder):
    """The recorder of ranks 1..N−1: rank 0 records the run; these keep nothing."""

    def metrics(self, points) -> None:
        pass


def _backend(spec: RunSpec) -> str:
    return "nccl" if resolve_device(spec.device).type == "cuda" else "gloo"


def _join_group(store: dist.Store, rank: int, spec: RunSpec) -> ProcessGroupCommunicator:
    if _backend(spec) == "nccl":  # NCCL's object collectives use the current device
        torch.cuda.set_device(resolve_device(spec.device, rank))
    dist.init_process_group(
        _backend(spec),
        store=store,
        rank=rank,
        world_size=spec.processes,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    return ProcessGroupCommunicator()


def main(argv: list[str] | None = None) -> None:
    """Rank r > 0 of a run: join rank 0's store, train its shards, record nothing."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--spec", required=True, help="the run spec as JSON")
    parser.add_argument("--checkpoint-dir", type=Path, help="resume from its latest checkpoint")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    spec = RunSpec.model_validate(json.loads(args.spec))
    store = dist.TCPStore(
        "127.0.0.1",
        args.port,
        spec.processes,
        is_master=False,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    communicator = _join_group(store, args.rank, spec)
    try:
        result = train(
            spec,
            _Discard(),
            checkpoint_dir=args.checkpoint_dir,
            resume=args.checkpoint_dir is not None,
            data_dir=args.data_dir,
            communicator=communicator,
        )
        logger.info("rank %d: %s at step %d", args.rank, result.status, result.step)
    finally:
        dist.destroy_process_group()


def _start_rank(
    rank: int, spec: RunSpec, port: int, threads: int, checkpoint: Path | None, data: Path | None
) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "worker.distributed",
        f"--rank={rank}",
        f"--port={port}",
        f"--threads={threads}",
        f"--spec={spec.model_dump_json()}",
    ]
    command += [f"--checkpoint-dir={checkpoint}"] if checkpoint else []
    command += [f"--data-dir={data}"] if data else []
    return subprocess.Popen(command)


def train_ranks(
    spec: RunSpec,
    recorder: Recorder,
    *,
    checkpoint_dir: Path | None,
    should_stop: Callable[[], bool],
    resume: bool,
    data_dir: Path | None,
    time_limit_s: float | None = None,
) -> RunResult:
    """Train `spec` over `spec.processes` ranks, this process being rank 0 (see the module
    doc); returns rank 0's outcome, failed with the reason when another rank died."""
    threads = max(1, torch.get_num_threads() // spec.processes)
    store = dist.TCPStore(
        "127.0.0.1",
        0,
        spec.processes,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S),
    )
    resume_from = checkpoint_dir if resume else None
    ranks = [
        _start_rank(rank, spec, store.port, threads, resume_from, data_dir)
        for rank in range(1, spec.processes)
    ]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    result: RunResult | None = None
    try:
        communicator = _join_group(store, 0, spec)
        try:
            result = train(
                spec,
                recorder,
                checkpoint_dir=checkpoint_dir,
                should_stop=should_stop,
                resume=resume,
                data_dir=data_dir,
                time_limit_s=time_limit_s,
                communicator=communicator,
            )
        finally:
            dist.destroy_process_group()
    except Exception as error:  # the group never formed: a rank failed to start
        logger.exception("the process group did not form")
        result = RunResult("failed", 0, f"{type(error).__name__}: {error}")
    finally:
        torch.set_num_threads(previous_threads)
        dead = _stop_ranks(ranks, wait=result is not None and result.status == "succeeded")
    if result.status == "failed" and dead:
        result.reason = f"{'; '.join(dead)}; rank 0: {result.reason}"
    return result


def _stop_ranks(ranks: list[subprocess.Popen], wait: bool) -> list[str]:
    """Join the other ranks (for JOIN_TIMEOUT_S after a success, at once otherwise), kill
    what is left, and describe the ranks that had died by themselves."""
    died = [
        _describe(rank, process.returncode)
        for rank, process in enumerate(ranks, 1)
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
