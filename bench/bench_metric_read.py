"""Benchmark: read one metric of a 1,000,000-point run downsampled to 2,000 points (PostgreSQL).

The goal (issue "2. Run engine"): <= 100 ms. The run is written the way a worker writes it
(`write_metrics` in batches, so the rollups the reads rely on are built by the real write
path), in a fresh database that is dropped afterwards. Each read opens its own session, as
an API request does, and the median and p95 of 20 reads are reported for three reads: the
whole run by step, the whole run by wall time, and a zoom on 10% of the steps.

    python -m bench.bench_metric_read [--points 1000000] [--reads 20]
        [--server postgresql+psycopg://postgres@127.0.0.1:5432/test]

Exits with status 1 if a p95 misses the goal.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Iterator

from sqlalchemy import create_engine

from backend.store.db import session_scope
from backend.store.migrate import scratch_database
from backend.store.queries import read_metric
from backend.store.results import write_metrics
from backend.store.writes import create_experiment
from bench.support import add_server_option

GOAL_MS = 100.0
MAX_POINTS = 2000
BATCH = 20_000


def loss_curve(n: int) -> Iterator[tuple[str, int, float, float]]:
    """A decreasing, noisy training loss with rare spikes; 20 ms per step."""
    rng = random.Random(0)
    for step in range(n):
        value = 2.0 / math.sqrt(1 + step / 50) + rng.gauss(0, 0.02)
        if rng.random() < 1e-4:
            value += rng.uniform(1, 10)
        yield ("train_loss", step, 0.02 * step, value)


def fill(url: str, n_points: int) -> str:
    with session_scope(url) as session:
        experiment = create_experiment(
            session,
            name="bench",
            spec={},
            runs=[{"label": "big", "optimizer": {"name": "kfac"}, "seed": 0, "spec": {}}],
        )
        run_id = experiment.runs[0].id
    batch: list[tuple[str, int, float, float]] = []
    for point in loss_curve(n_points):
        batch.append(point)
        if len(batch) == BATCH:
            with session_scope(url) as session:
                write_metrics(session, run_id, batch)
            batch = []
    if batch:
        with session_scope(url) as session:
            write_metrics(session, run_id, batch)
    # What autovacuum does after a bulk load: fresh planner statistics and visibility map.
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return run_id


def time_reads(url: str, reads: int, **kwargs: object) -> tuple[float, float, int]:
    """Median and p95 (ms) of `reads` timed reads after one warm-up, and the points returned."""
    timings = []
    for _ in range(reads + 1):
        start = time.perf_counter()
        with session_scope(url) as session:
            curve = read_metric(session, max_points=MAX_POINTS, **kwargs)
        timings.append((time.perf_counter() - start) * 1000)
    timings = sorted(timings[1:])
    p95 = timings[min(len(timings) - 1, math.ceil(0.95 * len(timings)) - 1)]
    return statistics.median(timings), p95, len(curve["x"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--reads", type=int, default=20)
    add_server_option(parser)
    args = parser.parse_args(argv)

    with scratch_database(args.server, prefix="kfac_bench") as url:
        run_id = fill(url, args.points)  # the write rate is bench_ingest's measurement
        print(f"wrote {args.points:,} points with write_metrics in batches of {BATCH:,}")
        cases = {
            "whole run, x=step": {"x": "step"},
            "whole run, x=time": {"x": "time"},
            "10% zoom, x=step": {"x": "step", "x_range": (args.points * 0.45, args.points * 0.55)},
        }
        ok = True
        print(f"read one metric downsampled to <= {MAX_POINTS} points ({args.reads} reads):")
        for label, kwargs in cases.items():
            median, p95, n = time_reads(url, args.reads, run_id=run_id, name="train_loss", **kwargs)
            ok &= p95 <= GOAL_MS
            print(f"  {label:<20} median {median:6.1f} ms  p95 {p95:6.1f} ms  ({n} points)")
        print(f"goal: <= {GOAL_MS:.0f} ms -> {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
