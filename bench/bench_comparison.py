"""Benchmark of the comparison endpoint through a real uvicorn process, against PostgreSQL.

Goal (issue "8. Comparisons"): an experiment of 5 optimizers × 5 grid points × 4 seeds (100
runs, each with 10,000 points of `train_loss` and, as a worker records them, of `step_time` and
`examples_seen`) — `GET /api/experiments/{id}/comparison` answers in <= 300 ms p95 cold and
<= 100 ms p95 warm.

- cold: every request asks for another target, so none is answered from the API's response
  cache and each one reads the store (final and best values, the crossings of the target,
  step-time samples) and computes the statistics;
- warm: the same request again (a reload, a second viewer), answered from the cache until the
  experiment's next event;
- also the first request after the API started (imports and connections included), and the
  default-target request.

The data is written with the store's own write path into a fresh database that is dropped at
the end.

    python -m bench.bench_comparison [--points 10000] [--requests 30]
        [--server postgresql+psycopg://postgres@127.0.0.1:5432/test] [--json PATH]
        [--database URL-OF-A-DATABASE-FILLED-BEFORE]

Prints a table; exits with status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from backend.store.db import session_scope
from backend.store.results import write_metrics
from backend.store.writes import claim_run, create_experiment, set_status
from bench.support import (
    HEADERS,
    LoadAverage,
    add_database_options,
    api_on_filled_database,
    at_least_two,
    print_table,
    time_requests,
    vacuum_analyze,
)

OPTIMIZERS = ("kfac", "kfc", "sgd_momentum", "adam", "sgd")
GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
SEEDS = 4
GOALS = {"cold_p95_ms": 300.0, "warm_p95_ms": 100.0}
NAME = "bench comparison"


def fill(url: str, n_points: int) -> str:
    """The experiment: every optimizer × lr × seed, each run with `n_points` steps of its
    three series; a loss that falls at a rate set by the optimizer and lr, with noise. Returns
    what it stored."""
    runs = []
    for optimizer in OPTIMIZERS:
        for lr in GRID:
            for seed in range(SEEDS):
                setting = {"name": optimizer, "lr": lr}
                spec = {"optimizer": setting, "config": {"lr": lr}, "seed": seed, "steps": n_points}
                label = f"{optimizer} lr={lr} · seed {seed}"
                runs.append({"label": label, "optimizer": setting, "seed": seed, "spec": spec})
    with session_scope(url) as session:
        experiment = create_experiment(session, name=NAME, spec={}, runs=runs)
        run_ids = [run.id for run in experiment.runs]
    steps = np.arange(n_points)
    for index, (run_id, run) in enumerate(zip(run_ids, runs, strict=True)):
        rng = np.random.default_rng(index)
        rate = run["optimizer"]["lr"] * (1 + OPTIMIZERS.index(run["optimizer"]["name"]))
        loss = 100 / np.sqrt(1 + rate * steps) + rng.normal(0, 0.5, n_points)
        step_time = 0.02 * (1 + 0.1 * rng.standard_normal(n_points) ** 2)
        wall = np.cumsum(step_time)
        points = [
            (name, int(s), float(t), float(v))
            for name, values in (
                ("train_loss", loss),
                ("step_time", step_time),
                ("examples_seen", 256.0 * (steps + 1)),
            )
            for s, t, v in zip(steps, wall, values, strict=True)
        ]
        with session_scope(url) as session:
            write_metrics(session, run_id, points)
            claim_run(session, run_id, "bench")
            set_status(session, run_id, "succeeded")
    vacuum_analyze(url)
    return f"{len(runs) * 3 * n_points:,} points ({len(runs)} runs × 3 series × {n_points:,})"


def measure(base: str, experiment_id: str, requests: int, api_pid: int) -> dict[str, float]:
    """Timings of the comparison request (see the module docstring and `time_requests`)."""
    path = f"/api/experiments/{experiment_id}/comparison"
    out: dict[str, float] = {}
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as client:
        start = time.perf_counter()
        first = client.get(path)
        out["first_ms"] = (time.perf_counter() - start) * 1000
        first.raise_for_status()
        body = first.json()
        out["groups"], out["target"] = len(body["groups"]), body["target"]
        out["runs"] = sum(len(group["runs"]) for group in body["groups"])
        out["reached"] = sum(group["steps_to_target"]["n"] for group in body["groups"])
        out["bytes"] = len(first.content)
        cases = {
            # Targets spread over the losses' range, each new to the cache.
            "cold": [{"target": 5.0 + 0.37 * i} for i in range(requests)],
            "warm": [{"target": 5.0}] * requests,
        }
        for label, queries in cases.items():
            figures, _ = time_requests(client, [(path, query) for query in queries], api_pid)
            out.update({f"{label}_{key}": value for key, value in figures.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=at_least_two, default=30)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    add_database_options(parser, points=10_000)
    args = parser.parse_args(argv)
    lab = api_on_filled_database(args, NAME, fill)
    with lab as (url, experiment_id, process, base), LoadAverage() as load:
        results = measure(base, experiment_id, args.requests, process.pid)
    results.update(load.as_dict())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return report(results, str(load))


def report(r: dict[str, float], load: str) -> int:
    rows = [
        ("groups / runs / runs that reached the default target", f"{r['groups']:.0f} / "
         f"{r['runs']:.0f} / {r['reached']:.0f}", ""),
        ("default target (best baseline final mean)", f"{r['target']:.4g}", ""),
        ("first request after start (default target)", f"{r['first_ms']:.1f} ms", ""),
        ("cold (a new target each time), p50 / p95",
         f"{r['cold_p50_ms']:.1f} / {r['cold_p95_ms']:.1f} ms",
         f"p95 <= {GOALS['cold_p95_ms']:.0f} ms"),
        ("warm (the same request again), p50 / p95",
         f"{r['warm_p50_ms']:.1f} / {r['warm_p95_ms']:.1f} ms",
         f"p95 <= {GOALS['warm_p95_ms']:.0f} ms"),
        ("  API CPU per request, cold / warm",
         f"{r['cold_cpu_ms']:.1f} / {r['warm_cpu_ms']:.1f} ms", ""),
        ("answer size", f"{r['bytes']:,.0f} bytes", ""),
    ]  # fmt: skip
    ok = {key: r[key] <= goal for key, goal in GOALS.items()}
    print_table(rows, load, ok)
    return 0 if all(ok.values()) and not math.isnan(r["cold_p95_ms"]) else 1


if __name__ == "__main__":
    sys.exit(main())
