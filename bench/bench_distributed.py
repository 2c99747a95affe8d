"""Data-parallel K-FAC on this machine: 2 processes × 1 thread against 1 process × 2 threads.

    python -m bench.bench_distributed [--batch B] [--width W] [--rounds R]

All train the same MLP (784-W-W-10, float32, cross-entropy, K-FAC with the quadratic model,
statistics every 10 steps and inverses every 20, as the spec's defaults) at the same global
batch on the same synthetic data, one after the other in this run (1 process × 1 thread too,
as the baseline both others split in two).  Per configuration it
reports the amortised step time (median over rounds of `period` steps), the inverse-update
time (`KroneckerPreconditioner.update_inverses`, which under 2 ranks includes the broadcast
of the other rank's inverses) and the share of rank 0's step time spent in collectives, with
the bytes moved per step.  The two ranks run as torch.multiprocessing children over gloo.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from kfac import KFAC
from kfac.distributed import Communicator, ProcessGroupCommunicator
from kfac.inverses import Notes

PERIOD = 20  # steps per round: one inverse update, two statistics updates


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )


def make_data(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 784, generator=generator)
    return x, (x[:, :10] + 0.5 * torch.randn(batch, 10, generator=generator)).argmax(1)


def measure(communicator: Communicator, width: int, batch: int, rounds: int) -> dict[str, float]:
    """Amortised step time, inverse-update time and communication of one rank."""
    model = make_model(width)
    optimizer = KFAC(model, "cross_entropy", communicator=communicator)
    x, y = make_data(batch)
    x, y = communicator.shard(x), communicator.shard(y)
    optimizer.step(x, y)  # warm-up: first statistics and inverses
    steps, moved, talking = [], [], 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(PERIOD):
            optimizer.step(x, y)
            diagnostics = optimizer.diagnostics  # one process reports no communication
            talking += diagnostics.get("communication_seconds", 0.0)
            moved.append(
                diagnostics.get("communication_bytes_all_reduced", 0.0)
                + diagnostics.get("communication_bytes_broadcast", 0.0)
            )
        steps.append((time.perf_counter() - start) / PERIOD)
    inverses = []
    for _ in range(3):
        start = time.perf_counter()
        optimizer.preconditioner.update_inverses(1.0, Notes())
        inverses.append(time.perf_counter() - start)
    communicator.take_traffic()
    total = sum(steps) * PERIOD
    return {
        "step_s": statistics.median(steps),
        "inverse_s": min(inverses),
        "communication_share": talking / total,
        "bytes_per_step": sum(moved) / len(moved),
    }


def _rank(rank: int, store: str, width: int, batch: int, rounds: int, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        store=dist.FileStore(store, 2),
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=300),
    )
    try:
        result = measure(ProcessGroupCommunicator(), width, batch, rounds)
        if rank == 0:
            out.put(result)
    finally:
        dist.destroy_process_group()


def two_processes(width: int, batch: int, rounds: int) -> dict[str, float]:
    context = mp.get_context("spawn")
    out = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(
            _rank,
            args=(f"{folder}/store", width, batch, rounds, out),
            nprocs=2,
            start_method="spawn",
        )
    return out.get()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds of {PERIOD} steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    single = measure(Communicator(), args.width, args.batch, args.rounds)
    torch.set_num_threads(2)
    one = measure(Communicator(), args.width, args.batch, args.rounds)
    two = two_processes(args.width, args.batch, args.rounds)
    load = os.getloadavg()[0]
    print(
        f"# Data-parallel K-FAC: MLP 784-{args.width}-{args.width}-10, global batch "
        f"{args.batch}, float32\n"
    )
    print(
        "| configuration | step (amortised) | inverse update | communication share "
        "| bytes per step |"
    )
    print("|---|---|---|---|---|")
    rows = [
        ("1 process × 1 thread", single),
        ("1 process × 2 threads", one),
        ("2 processes × 1 thread", two),
    ]
    for name, result in rows:
        print(
            f"| {name} | {result['step_s'] * 1e3:.1f} ms | {result['inverse_s'] * 1e3:.1f} ms "
            f"| {result['communication_share']:.1%} | {result['bytes_per_step'] / 1e6:.2f} MB |"
        )
    print(
        f"\nratios, 2 processes / 1 process: step {two['step_s'] / one['step_s']:.2f}×, "
        f"inverse update {two['inverse_s'] / one['inverse_s']:.2f}×; "
        f"against 1 process × 1 thread: step {two['step_s'] / single['step_s']:.2f}×, "
        f"inverse update {two['inverse_s'] / single['inverse_s']:.2f}×"
    )
    print(f"\nload average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
