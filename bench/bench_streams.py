"""Benchmark: many event streams over many experiments (issue 12, "Resources").

Everything real, on loopback: a fresh PostgreSQL database (dropped at the end), the API in its
own process, and this process playing both sides: the workers, appending one `metrics` event
at a time to the experiments' event logs (round-robin, `--events-per-s` in all, each in its own
transaction, as a worker's flush is), and the viewers, `--streams` open event streams spread
evenly over `--experiments` experiments, each experiment's streams opened with its own share
token (a teammate's page), so that no token holds more streams than the per-client limit.

Measured:

* how long opening every stream takes (all requested at once);
* event latency: from the event's `created_at` (stamped in the writer's transaction) to its
  arrival on each stream, p50 / p95 / max over every delivery; and deliveries missed;
* the API process's CPU share and memory;
* the per-client limit: one token opening one stream more than `KFAC_MAX_STREAMS_PER_CLIENT`
  gets a 429 with `Retry-After` and a JSON `detail`.

    python -m bench.bench_streams [--streams 1000] [--experiments 200] [--seconds 30]
        [--events-per-s 200] [--server postgresql+psycopg://postgres@127.0.0.1:5432/test]

Prints a Markdown section, writes docs/bench/streams.json, and exits with status 1 unless the
p95 latency is at most 1 s, nothing was missed, and the limit answered as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import select

from backend.settings import Settings
from backend.store.access import create_share_link
from backend.store.db import session_scope
from backend.store.models import Event
from backend.store.writes import append_event, create_experiment
from bench.bench_load import Viewers, summary, watch
from bench.support import (
    add_server_option,
    cpu_seconds,
    rss_mb,
    running_api,
    scratch_home,
    write_results,
)

GOAL_P95_S = 1.0
OPEN_TIMEOUT_S = 600  # generous: it fails with what it saw, never by a tight clock


def seed(url: str, n_experiments: int) -> list[tuple[str, str]]:
    """`n_experiments` experiments with one run each; (experiment id, share token) each."""
    out = []
    with session_scope(url) as session:
        for i in range(n_experiments):
            runs = [{"label": "sgd", "optimizer": {"name": "sgd"}, "seed": 0, "spec": {}}]
            experiment = create_experiment(session, name=f"streams {i}", spec={}, runs=runs)
            out.append((experiment.id, create_share_link(session, experiment.id)))
    return out


def write_events(url: str, ids: list[str], per_s: float, stop: threading.Event) -> int:
    """Append `metrics` events round-robin over `ids` at `per_s` until `stop`; how many."""
    written, start = 0, time.perf_counter()
    while not stop.is_set():
        experiment_id = ids[written % len(ids)]
        step = written // len(ids)
        payload = {"run_id": experiment_id, "series": {"train_loss": {"step": [step]}}}
        with session_scope(url) as session:
            append_event(session, experiment_id, "metrics", payload)
        written += 1
        delay = start + written / per_s - time.perf_counter()
        if delay > 0:
            stop.wait(delay)
    return written


def latencies(url: str, arrivals: list[tuple[int, float]]) -> list[float]:
    """Arrival minus the event's `created_at`, for every delivery (this database holds only
    the benchmark's events)."""
    if not arrivals:
        return []
    ids = [event_id for event_id, _ in arrivals]
    with session_scope(url) as session:
        created = dict(
            session.execute(
                select(Event.id, Event.created_at).where(Event.id.between(min(ids), max(ids)))
            ).all()
        )
    return [arrived - created[event_id].timestamp() for event_id, arrived in arrivals]


async def open_streams(
    base: str, targets: list[tuple[str, str]], n: int, seen: Viewers
) -> tuple[list[asyncio.Task], float]:
    """Open `n` streams (stream i on target i mod len); the tasks and the seconds until every
    one has said `: stream open`."""
    url = httpx.URL(base)
    start = time.perf_counter()
    tasks = [
        asyncio.create_task(watch(url, experiment_id, seen, f"Bearer {token}"))
        for experiment_id, token in (targets[i % len(targets)] for i in range(n))
    ]
    deadline = start + OPEN_TIMEOUT_S
    while seen.opened < n and time.perf_counter() < deadline:
        if failed := [t for t in tasks if t.done()]:
            raise RuntimeError(f"a stream failed to open: {failed[0].exception()!r}")
        await asyncio.sleep(0.05)
    if seen.opened < n:
        raise TimeoutError(f"only {seen.opened} of {n} streams opened in {OPEN_TIMEOUT_S} s")
    return tasks, time.perf_counter() - start


async def check_limit(base: str, experiment_id: str, token: str, limit: int) -> dict[str, Any]:
    """Open `limit` streams with one token, then one more: what did the extra one get?"""
    seen = Viewers()
    tasks, _ = await open_streams(base, [(experiment_id, token)], limit, seen)
    try:
        async with (
            httpx.AsyncClient(base_url=base, timeout=30) as client,
            client.stream(  # a stream: if it were let in, its body would never end
                "GET",
                f"/api/experiments/{experiment_id}/events",
                headers={"Authorization": f"Bearer {token}"},
            ) as extra,
        ):
            refused = extra.status_code == 429
            return {
                "status": extra.status_code,
                "retry_after": extra.headers.get("retry-after"),
                "detail": json.loads(await extra.aread())["detail"] if refused else "",
            }
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def measure(url: str, base: str, api_pid: int, args: argparse.Namespace) -> dict:
    targets = seed(url, args.experiments)
    seen = Viewers()
    api_cpu = cpu_seconds(api_pid)
    tasks, open_s = await open_streams(base, targets, args.streams, seen)
    opening_cpu = cpu_seconds(api_pid) - api_cpu

    stop = threading.Event()
    ids = [experiment_id for experiment_id, _ in targets]
    writer = asyncio.create_task(asyncio.to_thread(write_events, url, ids, args.events_per_s, stop))
    api_cpu, client_cpu = cpu_seconds(api_pid), time.process_time()
    start = time.perf_counter()
    await asyncio.sleep(args.seconds)
    stop.set()
    written = await writer
    await asyncio.sleep(3)  # the last events on their way
    seconds = time.perf_counter() - start
    api_cpu_share = (cpu_seconds(api_pid) - api_cpu) / seconds
    client_cpu_share = (time.process_time() - client_cpu) / seconds
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    watchers = Counter(ids[i % len(ids)] for i in range(args.streams))
    written_to = Counter(ids[i % len(ids)] for i in range(written))
    limit = Settings().max_streams_per_client
    first_id, first_token = targets[0]
    await asyncio.sleep(2)  # the server sees the closed streams go
    return {
        "settings": {**vars(args), "load_average": os.getloadavg()[0], "limit": limit},
        "open_s": open_s,
        "opening_api_cpu_s": opening_cpu,
        "events_written": written,
        "deliveries": len(seen.arrivals),
        "deliveries_expected": sum(watchers[e] * written_to[e] for e in ids),
        "latency": summary(latencies(url, seen.arrivals)),
        "api_cpu_share": api_cpu_share,
        "client_cpu_share": client_cpu_share,
        "api_rss_mb": rss_mb(api_pid),
        "limit_check": await check_limit(base, first_id, first_token, limit),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0, help="of events being written")
    parser.add_argument("--events-per-s", type=float, default=200.0, help="over all experiments")
    add_server_option(parser)
    args = parser.parse_args(argv)
    with (
        scratch_home(args.server, "streams") as (url, home),
        running_api(url, home) as (api, base),
    ):
        results = asyncio.run(measure(url, base, api.pid, args))
    write_results("streams", results)
    return report(results)


def report(r: dict[str, Any]) -> int:
    """Print the Markdown section; 0 if the goals are met."""
    s, lat, limit = r["settings"], r["latency"], r["limit_check"]
    print(
        f"## Event streams: {s['streams']:,} streams over {s['experiments']} experiments, "
        f"{s['events_per_s']:.0f} events/s for {s['seconds']:.0f} s\n"
    )
    print("| measure | value |")
    print("|---|---|")
    print(f"| open all {s['streams']:,} streams (requested at once) | {r['open_s']:.1f} s |")
    print(f"| API CPU while opening them | {r['opening_api_cpu_s']:.1f} s |")
    if lat["n"]:
        print(
            f"| event: write -> arrival, p50 / p95 / max | {lat['p50_ms']:.0f} / "
            f"{lat['p95_ms']:.0f} / {lat['max_ms']:.0f} ms |"
        )
    print(
        f"| events written (one per transaction) | {r['events_written']:,} "
        f"({r['events_written'] / s['seconds']:.0f}/s) |"
    )
    print(f"| deliveries (of expected) | {r['deliveries']:,} of {r['deliveries_expected']:,} |")
    print(f"| API CPU while streaming | {100 * r['api_cpu_share']:.0f}% of a core |")
    print(
        f"| this process's CPU (viewers' client and writer) | "
        f"{100 * r['client_cpu_share']:.0f}% of a core |"
    )
    print(f"| API RSS (peak) | {r['api_rss_mb'][0]:.0f} MB ({r['api_rss_mb'][1]:.0f} MB) |")
    print(
        f"| one token's stream number {s['limit'] + 1} | HTTP {limit['status']}, Retry-After "
        f"{limit['retry_after']}: {limit['detail']} |"
    )
    ok = (
        lat["n"] > 0
        and lat["p95_ms"] <= 1e3 * GOAL_P95_S
        and r["deliveries"] == r["deliveries_expected"]
        and limit["status"] == 429
        and limit["retry_after"] is not None
    )
    print(
        f"\nLoad average at the end: {s['load_average']:.1f} on {os.cpu_count()} CPUs. Goal: "
        f"p95 <= {GOAL_P95_S:.0f} s, every event delivered, a 429 past the limit: "
        f"{'met' if ok else 'MISSED'}."
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
