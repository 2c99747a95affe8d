"""Data-parallel K-FAC's traffic by world size and width, and a run over two nodes against one.

    python -m bench.bench_nodes [--steps S]

1. Bytes per step: N gloo ranks (N = 2, 3, 4, spawned) train an MLP 784-W-W-10 (float32, K-FAC
   defaults: statistics every 10 steps, inverses every 20) for 40 steps at global batch 256,
   block-diagonal and block-tridiagonal; rank 0 reports the mean bytes all-reduced and
   broadcast per step (`optimizer.diagnostics`), beside the count of `modelled_values`
   (values × 4 bytes): the buffers do not depend on the number of ranks.
2. Nodes: the same lab run (digits8x8, MLP 64-256-256-10, K-FAC, batch 256) through
   worker.training.train, one after the other in this run: 1 process; 1 node × 2 processes;
   2 nodes × 1 process, node 1 started as a worker would start it (worker.distributed.
   train_node in another process, invited through the rendezvous).  Median step time of rank
   0 and of the slowest rank, as recorded.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import statistics
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from backend.spec import RunSpec
from kfac import KFAC
from kfac.distributed import ProcessGroupCommunicator
from worker.distributed import Rendezvous, train_node, train_ranks
from worker.run_types import MemoryRecorder
from worker.training import train

WIDTHS = (64, 128, 256)
WORLDS = (2, 3, 4)
STRUCTURES = ("block_diagonal", "block_tridiagonal")
TRAFFIC_STEPS, BATCH = 40, 256


def make_model(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(784, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 10)
    )


def modelled_values(width: int, structure: str) -> float:
    """Values per step that rank 0 hands to collectives, amortised: every step the loss and
    its count (2), the gradient and its count (P + 1), the quadratic model's 2×2 Fisher
    products and count (5) and every 5th the loss after the step (2); every 10th the factors
    (S + 1, and the cross factors for the tridiagonal structure); every 20th the inverses with
    a flag each (S + 2L) or the tridiagonal pieces.  P parameters, S = Σ(a² + g²)."""
    sides = [(785, width), (width + 1, width), (width + 1, 10)]
    p = sum(a * g for a, g in sides)
    s = sum(a * a + g * g for a, g in sides)
    statistics_values = s + 1
    inverse_values = s + 2 * len(sides)
    if structure == "block_tridiagonal":
        pairs = list(zip(sides, sides[1:], strict=False))
        statistics_values += sum(a * a2 + g * g2 for (a, g), (a2, g2) in pairs)
        last_a, last_g = sides[-1]
        # The couplings and the scale keep the r = min(d, d') rows that can be non-zero.
        inverse_values = (
            sum(
                min(a, a2) * a2 + min(g, g2) * g2 + a * a + g * g + min(g, g2) * min(a, a2) + 1
                for (a, g), (a2, g2) in pairs
            )
            + (last_a**2 + 1)
            + (last_g**2 + 1)
        )
    return 2 + (p + 1) + 5 + 2 / 5 + statistics_values / 10 + inverse_values / 20


def _traffic_rank(rank: int, world: int, store: str, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", store=dist.FileStore(store, world), rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=600),
    )  # fmt: skip
    try:
        communicator = ProcessGroupCommunicator()
        generator = torch.Generator().manual_seed(1)
        x = torch.randn(BATCH, 784, generator=generator)
        y = x[:, :10].argmax(1)
        for width in WIDTHS:
            for structure in STRUCTURES:
                optimizer = KFAC(
                    make_model(width), "cross_entropy", communicator=communicator,
                    structure=structure,
                )  # fmt: skip
                optimizer.step(communicator.shard(x), communicator.shard(y))  # + the sync
                reduced = broadcast = 0.0
                for _ in range(TRAFFIC_STEPS):
                    optimizer.step(communicator.shard(x), communicator.shard(y))
                    reduced += optimizer.diagnostics["communication_bytes_all_reduced"]
                    broadcast += optimizer.diagnostics["communication_bytes_broadcast"]
                if rank == 0:
                    out.put((world, width, structure, reduced / TRAFFIC_STEPS,
                             broadcast / TRAFFIC_STEPS))  # fmt: skip
    finally:
        dist.destroy_process_group()


def traffic() -> list[tuple]:
    rows = []
    for world in WORLDS:
        out = mp.get_context("spawn").SimpleQueue()
        with tempfile.TemporaryDirectory() as folder:
            mp.start_processes(
                _traffic_rank, args=(world, f"{folder}/store", out), nprocs=world,
                start_method="spawn",
            )  # fmt: skip
        while not out.empty():
            rows.append(out.get())
    return rows


def lab_spec(steps: int, **fields) -> RunSpec:
    return RunSpec.model_validate({
        "dataset": "digits8x8", "model": {"name": "mlp", "hidden": [256, 256]},
        "optimizer": {"name": "kfac"}, "batch_size": BATCH, "steps": steps,
        "eval_interval": None, "checkpoint_interval": None, "device": "cpu", **fields,
    })  # fmt: skip


def _node(spec_json: str, port: int) -> None:
    torch.set_num_threads(1)
    spec = RunSpec.model_validate_json(spec_json)
    train_node(spec, 1, "127.0.0.1", port, "bench:node1", None)


def step_times(spec: RunSpec) -> tuple[float, float]:
    """(median step time of rank 0, median of the slowest rank's), in seconds."""
    recorder = MemoryRecorder()
    torch.set_num_threads(1)
    if spec.nodes == 1:
        result = train(spec, recorder)
    else:
        nodes: list[multiprocessing.Process] = []

        def invite(port: int) -> None:
            process = multiprocessing.get_context("spawn").Process(
                target=_node, args=(spec.model_dump_json(), port)
            )
            process.start()
            nodes.append(process)

        result = train_ranks(
            spec, recorder, checkpoint_dir=None, should_stop=lambda: False, resume=False,
            data_dir=None, rendezvous=Rendezvous(invite, 120.0),
        )  # fmt: skip
        for process in nodes:
            process.join(60)
    assert result.status == "succeeded", result
    warm = slice(5, None)  # the first steps compile and allocate
    own = list(recorder.series["step_time"].values())[warm]
    slowest = list(recorder.series.get("step_time_slowest_rank", {}).values())[warm] or own
    return statistics.median(own), statistics.median(slowest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="steps of each lab run")
    args = parser.parse_args()
    print("# Data-parallel K-FAC: traffic and nodes\n")
    print("## Bytes per step (rank 0, mean over 40 steps, float32)\n")
    print("| ranks | width | structure | all-reduced | broadcast | total | model |")
    print("|---|---|---|---|---|---|---|")
    for world, width, structure, reduced, broadcast in sorted(traffic()):
        model = 4 * modelled_values(width, structure)
        print(
            f"| {world} | {width} | {structure} | {reduced / 1e3:.1f} kB "
            f"| {broadcast / 1e3:.1f} kB | {(reduced + broadcast) / 1e3:.1f} kB "
            f"| {model / 1e3:.1f} kB |"
        )
    print(f"\n## One run, {args.steps} steps (digits8x8, MLP 64-256-256-10, batch {BATCH})\n")
    print("| layout | step, rank 0 | step, slowest rank |")
    print("|---|---|---|")
    layouts = [
        ("1 process", {}),
        ("1 node × 2 processes", {"processes": 2}),
        ("2 nodes × 1 process", {"nodes": 2}),
    ]
    times = {}
    for name, fields in layouts:
        own, slowest = step_times(lab_spec(args.steps, **fields))
        times[name] = own
        print(f"| {name} | {own * 1e3:.1f} ms | {slowest * 1e3:.1f} ms |")
    nodes, processes, alone = (times[name] for name, _ in reversed(layouts))
    print(
        f"\nratios: 2 nodes / 1 node × 2 processes {nodes / processes:.2f}×, "
        f"2 nodes / 1 process {nodes / alone:.2f}×"
    )
    print(f"\nload average (1 min) at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
