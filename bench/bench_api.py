"""Benchmark of the API through a real uvicorn process, against PostgreSQL.

Goals (issue "3. Backend"):

* an experiment page's data — 10 runs x 4 metrics, 2,000 points each out of 100,000 stored per
  series, in the one request the page makes (`GET /api/experiments/{id}/metrics`) — p95
  <= 50 ms over 30 requests;
* the API process's resident memory <= 200 MB (after those requests and with 50 open streams);
* live events: with 50 event streams open on the experiment, a writer appends metric batches
  the way a worker does (`write_metrics`, one event each); the time from the start of each
  write to its arrival on every stream, p50 / p95 (goal: p95 <= 1 s).

The data is written with the store's own write path into a fresh database that is dropped at
the end; the API runs as `python -m uvicorn backend.api.main:app` in a child process, as it
would in production (one worker process, no reload).

    python -m bench.bench_api [--points 100000] [--requests 30] [--streams 50]
        [--events 40] [--server postgresql+psycopg://postgres@127.0.0.1:5432/test]
        [--database URL-OF-A-DATABASE-FILLED-BEFORE]

Prints a table; exits with status 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import statistics
import sys
import time

import httpx

from backend.store.db import session_scope
from backend.store.models import Experiment
from backend.store.results import write_metrics
from backend.store.writes import create_experiment
from bench.support import (
    HEADERS,
    LoadAverage,
    add_database_options,
    api_on_filled_database,
    at_least_two,
    percentile,
    print_table,
    rss_mb,
    time_requests,
    vacuum_analyze,
)

NAME = "bench"

METRICS = ("train_loss", "test_loss", "test_accuracy", "update_norm")
N_RUNS = 10
MAX_POINTS = 2000
GOALS = {"page_p95_ms": 50.0, "rss_mb": 200.0, "sse_p95_s": 1.0}
BATCH_STEPS = 10_000


# --- data ----------------------------------------------------------------------------------


def fill(url: str, n_points: int) -> str:
    """An experiment of N_RUNS runs, each with the 4 metrics at `n_points` steps. Returns what
    it stored."""
    runs = [
        {"label": f"run {i}", "optimizer": {"name": "kfac"}, "seed": i, "spec": {"seed": i}}
        for i in range(N_RUNS)
    ]
    with session_scope(url) as session:
        experiment = create_experiment(session, name=NAME, spec={}, runs=runs)
        run_ids = [run.id for run in experiment.runs]
    for index, run_id in enumerate(run_ids):
        for start in range(0, n_points, BATCH_STEPS):
            steps = range(start, min(n_points, start + BATCH_STEPS))
            points = [
                (name, s, 0.02 * s, (k + 1) / math.sqrt(1 + s / 50) + 0.01 * index)
                for k, name in enumerate(METRICS)
                for s in steps
            ]
            with session_scope(url) as session:
                write_metrics(session, run_id, points)
    vacuum_analyze(url)
    total = N_RUNS * len(METRICS) * n_points
    return f"{total:,} points ({N_RUNS} runs x {len(METRICS)} metrics x {n_points:,})"


# --- measurements --------------------------------------------------------------------------


def time_page(base: str, experiment_id: str, requests: int, api_pid: int) -> dict[str, float]:
    """Median / p95 (ms) of the page's metrics request, cold and warm, and of the
    experiment request. Cold: each request asks for a different `max_points` (2000, 1999,
    ...), so none is answered from the API's response cache and every one reads the store;
    warm: the same request again (a reload, another viewer), answered from the cache. Also
    the API process's CPU time per request, which other load on the machine barely changes
    (the database's share is not in it)."""
    out: dict[str, float] = {}
    page = f"/api/experiments/{experiment_id}/metrics"
    names = ",".join(METRICS)
    cases = {
        "cold": [(page, {"names": names, "max_points": MAX_POINTS - i}) for i in range(requests)],
        "warm": [(page, {"names": names, "max_points": MAX_POINTS})] * requests,
        "experiment": [(f"/api/experiments/{experiment_id}", {})] * requests,
    }
    with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
        for _ in range(3):  # warm-ups: connections, code paths, the database's buffers
            client.get(page, params={"names": names, "max_points": 100}).raise_for_status()
            client.get(f"/api/experiments/{experiment_id}").raise_for_status()
        for label, calls in cases.items():
            figures, response = time_requests(client, calls, api_pid)
            out.update({f"{label}_{key}": value for key, value in figures.items()})
            if label == "warm":
                body = response.json()
                out["page_points"] = sum(
                    len(s["x"]) for run in body["runs"] for s in run["series"].values()
                )
                out["page_bytes"] = len(response.content)
                out["page_wire_bytes"] = response.num_bytes_downloaded  # gzip
    return out


async def sse_latency(
    base: str, url: str, experiment_id: str, run_id: str, n_streams: int, n_events: int
) -> dict[str, float]:
    """Open `n_streams` streams; write `n_events` metric batches, 0.2 s apart, in a thread;
    latency = arrival on a stream - start of the write, for every (event, stream)."""
    written: dict[int, float] = {}
    latencies: list[float] = []
    received = [0] * n_streams
    opened = asyncio.Event()
    ready = 0
    metric = f"live_{secrets.token_hex(4)}"  # a new series, so every write is new

    async def listen(index: int, client: httpx.AsyncClient) -> None:
        nonlocal ready
        path = f"/api/experiments/{experiment_id}/events"
        async with client.stream("GET", path, headers=HEADERS) as response:
            response.raise_for_status()
            lines = response.aiter_lines()
            async for line in lines:
                if line.startswith(":"):  # "stream open": subscribed
                    ready += 1
                    if ready == n_streams:
                        opened.set()
                    break
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                arrived = time.time()
                payload = json.loads(line[5:])
                step = payload["series"][metric]["step"][0]
                latencies.append(arrived - written[step])
                received[index] += 1
                if received[index] == n_events:
                    return

    def writer() -> None:
        for i in range(n_events):
            written[i] = time.time()
            with session_scope(url) as session:
                write_metrics(session, run_id, [(metric, i, float(i), 1.0)])
            time.sleep(0.2)

    limits = httpx.Limits(max_connections=n_streams + 5)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        listeners = [asyncio.create_task(listen(i, client)) for i in range(n_streams)]
        await asyncio.wait_for(opened.wait(), 60)
        write = asyncio.create_task(asyncio.to_thread(writer))
        await asyncio.wait_for(asyncio.gather(write, *listeners), 120)
    return {
        "sse_p50_s": statistics.median(latencies),
        "sse_p95_s": percentile(latencies, 0.95),
        "sse_max_s": max(latencies),
        "sse_deliveries": len(latencies),
    }


async def with_open_streams(base: str, experiment_id: str, n: int, pid: int) -> float:
    """RSS (MB) of the API while `n` streams are open."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        contexts = [
            client.stream("GET", f"/api/experiments/{experiment_id}/events", headers=HEADERS)
            for _ in range(n)
        ]
        for context in contexts:
            await context.__aenter__()
        await asyncio.sleep(1.0)
        current, _ = rss_mb(pid)
        for context in contexts:
            await context.__aexit__(None, None, None)
    return current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=at_least_two, default=30)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--events", type=int, default=40)
    add_database_options(parser, points=100_000)
    args = parser.parse_args(argv)

    lab = api_on_filled_database(args, NAME, fill)
    with lab as (url, experiment_id, process, base), LoadAverage() as load:
        with session_scope(url) as session:
            run_ids = [run.id for run in session.get(Experiment, experiment_id).runs]
        results = time_page(base, experiment_id, args.requests, process.pid)
        results["rss_after_reads_mb"], _ = rss_mb(process.pid)
        results["rss_streams_mb"] = asyncio.run(
            with_open_streams(base, experiment_id, args.streams, process.pid)
        )
        live = sse_latency(base, url, experiment_id, run_ids[0], args.streams, args.events)
        results.update(asyncio.run(live))
        results["rss_mb"], results["rss_peak_mb"] = rss_mb(process.pid)
    return report(results, args, str(load))


def report(r: dict[str, float], args: argparse.Namespace, load: str) -> int:
    rss = max(r["rss_after_reads_mb"], r["rss_streams_mb"], r["rss_mb"])
    page_goal = f"<= {GOALS['page_p95_ms']:.0f} ms"
    rows = [
        (
            "page data cold (read from the store), p50 / p95",
            f"{r['cold_p50_ms']:.1f} / {r['cold_p95_ms']:.1f} ms",
            page_goal,
        ),
        (
            "page data warm (cached until next event), p50 / p95",
            f"{r['warm_p50_ms']:.1f} / {r['warm_p95_ms']:.1f} ms",
            page_goal,
        ),
        (
            "  points / bytes per answer (gzip on the wire)",
            f"{r['page_points']:,.0f} / {r['page_bytes']:,.0f} ({r['page_wire_bytes']:,.0f})",
            "",
        ),
        (
            "  API CPU per request, cold / warm",
            f"{r['cold_cpu_ms']:.1f} / {r['warm_cpu_ms']:.1f} ms",
            "",
        ),
        (
            "experiment with its runs, p50 / p95",
            f"{r['experiment_p50_ms']:.1f} / {r['experiment_p95_ms']:.1f} ms",
            "",
        ),
        (
            "API RSS after reads / 50 streams / end",
            f"{r['rss_after_reads_mb']:.0f} / {r['rss_streams_mb']:.0f} / {r['rss_mb']:.0f} MB",
            f"<= {GOALS['rss_mb']:.0f} MB",
        ),
        ("API peak RSS (VmHWM)", f"{r['rss_peak_mb']:.0f} MB", ""),
        (
            f"SSE write -> receipt, {args.streams} streams, p50 / p95",
            f"{r['sse_p50_s'] * 1000:.0f} / {r['sse_p95_s'] * 1000:.0f} ms",
            f"p95 <= {GOALS['sse_p95_s'] * 1000:.0f} ms",
        ),
        ("SSE max / deliveries", f"{r['sse_max_s'] * 1000:.0f} ms / {r['sse_deliveries']:.0f}", ""),
    ]
    ok = {
        "page cold": r["cold_p95_ms"] <= GOALS["page_p95_ms"],
        "page warm": r["warm_p95_ms"] <= GOALS["page_p95_ms"],
        "rss": rss <= GOALS["rss_mb"],
        "sse": r["sse_p95_s"] <= GOALS["sse_p95_s"],
    }
    print_table(rows, load, ok)
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
