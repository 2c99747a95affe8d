"""Benchmark: metric points per second one writer stores in PostgreSQL (goal: >= 50,000/s).

A worker hands `write_metrics` what it has recorded since the last write: about a second of
steps normally, tens of thousands of points after a database outage or for a dense metric
(`worker.recording` merges a backlog into batches of up to 50,000 points). Each batch here is
shaped like that: the four metrics a run logs every step (train loss, step time, examples
seen, an optimizer diagnostic) over consecutive new steps, written in its own transaction as
the recorder does, into a fresh database that is dropped at the end. So every figure includes
what a real write does: the idempotent insert, the rollup merge, the series totals and the
`metrics` event.

Batch sizes are measured round-robin (1k, 10k, 50k, 1k, ...), each size into its own run, so
all see the same machine load; each round also sends its batch a second time (a redelivery,
which must store nothing) and times that too. Reported: the median over rounds of points per
second for new points and for the redelivered batch.

    python -m bench.bench_ingest [--sizes 1000 10000 50000] [--rounds 7]
        [--server postgresql+psycopg://postgres@127.0.0.1:5432/test]

Prints a Markdown section, writes docs/bench/ingest.json, and exits with status 1 if the
largest batch misses the goal.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from typing import Any

from backend.store.db import session_scope
from backend.store.migrate import scratch_database
from backend.store.results import write_metrics
from backend.store.writes import create_experiment
from bench.support import add_server_option, write_results

GOAL_POINTS_PER_S = 50_000
METRICS = ("train_loss", "step_time", "examples_seen", "update_norm")


def batch(first_step: int, n_points: int) -> list[tuple[str, int, float, float]]:
    """`n_points` points: every metric at each of the steps from `first_step` on."""
    steps = range(first_step, first_step + n_points // len(METRICS))
    return [
        (name, step, 0.02 * step, (k + 1) / math.sqrt(1 + step / 50))
        for step in steps
        for k, name in enumerate(METRICS)
    ]


def timed_write(url: str, run_id: str, points: list[tuple[str, int, float, float]]) -> float:
    """Seconds to write `points` in one transaction; checks what was stored."""
    start = time.perf_counter()
    with session_scope(url) as session:
        stored = write_metrics(session, run_id, points)
    elapsed = time.perf_counter() - start
    if stored not in (0, len(points)):
        raise AssertionError(f"{stored} of {len(points)} points were new")
    return elapsed


def measure(url: str, sizes: list[int], rounds: int) -> dict[str, Any]:
    runs = [
        {"label": f"batches of {size}", "optimizer": {"name": "sgd"}, "seed": 0, "spec": {}}
        for size in sizes
    ]
    with session_scope(url) as session:
        experiment = create_experiment(session, name="bench ingest", spec={}, runs=runs)
        run_ids = [run.id for run in experiment.runs]
    new: dict[int, list[float]] = {size: [] for size in sizes}
    again: dict[int, list[float]] = {size: [] for size in sizes}
    for round_ in range(rounds + 1):  # round 0 warms up connections, caches and code paths
        for size, run_id in zip(sizes, run_ids, strict=True):
            points = batch(round_ * size // len(METRICS), size)
            first, second = timed_write(url, run_id, points), timed_write(url, run_id, points)
            if round_:
                new[size].append(len(points) / first)
                again[size].append(len(points) / second)
    return {
        str(size): {
            "new_points_per_s": statistics.median(new[size]),
            "redelivered_points_per_s": statistics.median(again[size]),
            "new_rounds": new[size],
        }
        for size in sizes
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 50_000])
    parser.add_argument("--rounds", type=int, default=7)
    add_server_option(parser)
    args = parser.parse_args(argv)
    with scratch_database(args.server, prefix="kfac_bench") as url:
        results = measure(url, args.sizes, args.rounds)
    results["settings"] = {**vars(args), "load_average": os.getloadavg()[0]}
    write_results("ingest", results)
    return report(results, args)


def report(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Print the Markdown section; 0 if the largest batch meets the goal."""
    print(
        f"## Metric ingest: `write_metrics` into PostgreSQL, {len(METRICS)} metrics per step, "
        f"median of {args.rounds} rounds\n"
    )
    print("| batch (points) | new points/s | ms per batch | redelivered batch, points/s |")
    print("|---|---|---|---|")
    for size in args.sizes:
        r = results[str(size)]
        print(
            f"| {size:,} | {r['new_points_per_s']:,.0f} | "
            f"{1e3 * size / r['new_points_per_s']:.0f} | {r['redelivered_points_per_s']:,.0f} |"
        )
    largest = max(args.sizes)
    rate = results[str(largest)]["new_points_per_s"]
    ok = rate >= GOAL_POINTS_PER_S
    print(
        f"\nLoad average at the end: {results['settings']['load_average']:.1f} on "
        f"{os.cpu_count()} CPUs. Goal: >= {GOAL_POINTS_PER_S:,} points/s in batches of "
        f"{largest:,}: {'met' if ok else 'MISSED'} ({rate:,.0f})."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
