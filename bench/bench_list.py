"""The experiments list with 10,000 experiments: how long the API takes to answer a page.

A scratch SQLite database (migrated to head) gets `--experiments` experiments of two runs
each, in several statuses, then a real API process (bench/support.py) answers the pages the
list asks for, over HTTP: the first page of 50 (newest first, with its total), a search by
name, a status filter, and the last page. Each is asked `--repeat` times; the table gives the
median and the 95th percentile. Goal: p95 <= 100 ms for each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from backend.store.db import session_scope
from backend.store.migrate import upgrade
from backend.store.writes import claim_run, create_experiment, set_status
from bench.support import HEADERS, percentile, running_api

GOAL_P95_MS = 100.0
OUTCOMES = ("succeeded", "failed", "diverged", "cancelled")


def seed(url: str, count: int) -> None:
    """`count` experiments of two runs; three in four finished (in turn each outcome)."""
    with session_scope(url) as session:
        for index in range(count):
            runs = [
                {"label": f"{name} · seed 0", "optimizer": {"name": name}, "seed": 0, "spec": {}}
                for name in ("kfac", "sgd_momentum")
            ]
            experiment = create_experiment(
                session, name=f"sweep {index} lr", spec={}, runs=runs, preset="smoke"
            )
            if index % 4:
                for run in experiment.runs:
                    claim_run(session, run.id, "bench")
                    set_status(session, run.id, OUTCOMES[index % len(OUTCOMES)], step=10)


def timings(base: str, params: dict, repeat: int) -> tuple[list[float], dict]:
    times, answer = [], {}
    with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
        for _ in range(repeat):
            start = time.perf_counter()
            response = client.get("/api/experiments", params=params)
            times.append((time.perf_counter() - start) * 1000)
            response.raise_for_status()
            answer = response.json()
    return times, answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'list.db'}"
        upgrade(url)
        start = time.perf_counter()
        seed(url, args.experiments)
        print(f"stored {args.experiments:,} experiments in {time.perf_counter() - start:.0f} s")
        with running_api(url, Path(folder)) as (_, base):
            asks = {
                "first page of 50": {"limit": 50},
                "search by name": {"limit": 50, "name": "sweep 123"},
                "status filter (failed)": {"limit": 50, "status": "failed"},
                "last page": {"limit": 50, "offset": args.experiments - 50},
            }
            print(f"\n{'request':<26}{'total':>8}{'p50 ms':>10}{'p95 ms':>10}  goal")
            met = True
            for name, params in asks.items():
                times, answer = timings(base, params, args.repeat)
                p95 = percentile(times, 0.95)
                met &= p95 <= GOAL_P95_MS
                print(
                    f"{name:<26}{answer['total']:>8,}{statistics.median(times):>10.1f}"
                    f"{p95:>10.1f}  p95 <= {GOAL_P95_MS:.0f} ms"
                )
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"goal: {'met' if met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
