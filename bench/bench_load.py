"""Benchmark: 50 viewers on one experiment while its 4 runs train (issue 7's load test).

Everything real, on loopback: a fresh PostgreSQL database (dropped at the end), the embedded
filesystem broker, 4 `kfac-lab worker` processes training the 4 runs of one experiment (small
MLPs on digits8x8, metrics every step, checkpoints every 500 steps), and the API in its own
process. Three phases of equal length, back to back while the runs train:

1. `before` — nobody watches;
2. `viewers` — 50 event streams open on the experiment (`GET /api/experiments/{id}/events`),
   and a few pages polling what a page loads (`GET /api/experiments/{id}/metrics` and
   `GET /api/experiments/{id}`);
3. `after` — nobody watches again, so that a drift of the machine's speed during the run
   (other jobs, thermal) does not pass for the viewers' cost.

Measured:

* the workers' speed in each phase: steps per second of the 4 runs together (from the steps
  stored at each phase boundary) and the median `step_time` the runs record; the viewers'
  cost is `viewers` against the mean of `before` and `after` (goal: < 5%);
* event latency: the time from a worker writing an event (its `created_at` in the store, set
  in the worker's transaction) to its arrival on each stream, p50 / p95 over every delivery;
* API latencies under load: p50 / p95 of the pages' requests;
* the CPU time the API process and this process (the viewers' client) used per phase.

    python -m bench.bench_load [--phase-seconds 40] [--viewers 50] [--pollers 3]
        [--poll-interval 3] [--workers 4]
        [--server postgresql+psycopg://postgres@127.0.0.1:5432/test]

Prints a Markdown section, writes docs/bench/load.json, and exits with status 1 if the
viewers cost the workers 5% or more of their speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import select

from backend.store.db import session_scope
from backend.store.models import Event, MetricSeries, Run
from bench.support import (
    HEADERS,
    TOKEN,
    add_server_option,
    cpu_seconds,
    percentile,
    rss_mb,
    running_api,
    scratch_home,
    write_results,
)
from tests.worker.labs import Lab, lab, run_spec

GOAL_COST = 0.05
RUN = {
    "model": {"name": "mlp", "hidden": [256, 256]},
    "batch_size": 128,
    "steps": 100_000,  # more than the phases last: the runs train throughout
    "eval_interval": 100,
    "checkpoint_interval": 500,
}
# Optimizers that never diverge on this task, so all 4 runs train to the end of the phases.
OPTIMIZERS = ({"name": "sgd_momentum", "lr": 0.05}, {"name": "adam", "lr": 1e-3})


# --- the workers' progress -------------------------------------------------------------------


def steps_stored(url: str, run_ids: list[str]) -> dict[str, int]:
    """The last step each run has stored (its `step_time` series; a second behind at most)."""
    with session_scope(url) as session:
        rows = session.execute(
            select(MetricSeries.run_id, MetricSeries.step_max).where(
                MetricSeries.run_id.in_(run_ids), MetricSeries.name == "step_time"
            )
        ).all()
    return {run_id: step or 0 for run_id, step in rows}


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    steps: dict[str, tuple[int, int]] = field(default_factory=dict)  # run -> (first, last]
    api_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


async def run_phase(
    name: str, seconds: float, url: str, run_ids: list[str], api_pid: int, load: Any = None
) -> Phase:
    """Let the runs train for `seconds` (with `load(seconds)` running, if given) and note
    where each run was at both ends and the CPU the API and this process used."""
    phase = Phase(name)
    begin = steps_stored(url, run_ids)
    api_cpu, client_cpu = cpu_seconds(api_pid), time.process_time()
    start = time.perf_counter()
    await (load(seconds) if load else asyncio.sleep(seconds))
    phase.seconds = time.perf_counter() - start
    end = steps_stored(url, run_ids)
    phase.api_cpu_s = cpu_seconds(api_pid) - api_cpu
    phase.client_cpu_s = time.process_time() - client_cpu
    phase.steps = {run_id: (begin.get(run_id, 0), end.get(run_id, 0)) for run_id in run_ids}
    return phase


def worker_speed(the_lab: Lab, phases: list[Phase]) -> dict[str, dict[str, float]]:
    """Per phase: steps/s of all runs together and the median recorded step time (ms)."""
    recorded = {run_id: the_lab.points(run_id, "step_time") for run_id in phases[0].steps}
    out = {}
    for phase in phases:
        times = [
            value
            for run_id, (first, last) in phase.steps.items()
            for step, value in recorded[run_id]
            if first < step <= last
        ]
        done = sum(last - first for first, last in phase.steps.values())
        out[phase.name] = {
            "steps_per_s": done / phase.seconds,
            "step_time_ms": 1e3 * statistics.median(times) if times else float("nan"),
            "api_cpu_share": phase.api_cpu_s / phase.seconds,
            "client_cpu_share": phase.client_cpu_s / phase.seconds,
        }
    return out


# --- the viewers -------------------------------------------------------------------------------


@dataclass
class Viewers:
    """What the viewers saw: (event id, arrival time) per delivery, latency per request."""

    arrivals: list[tuple[int, float]] = field(default_factory=list)
    opened: int = 0
    requests: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def watch(
    base: httpx.URL,
    experiment_id: str,
    seen: Viewers,
    authorization: str = HEADERS["Authorization"],
) -> None:
    """One page's event stream: note when each event has fully arrived (its blank line).

    A bare HTTP/1.1 client on a socket, cutting frames out of the raw bytes with `bytes.find`
    (in C): this client shares the machine with the workers it measures, so it must cost
    little, and an HTTP library's per-chunk work costs as much as the API's. The chunked
    encoding's size lines stay between the frames, where they do not disturb the parsing.
    """
    reader, writer = await asyncio.open_connection(base.host, base.port)
    request = (
        f"GET /api/experiments/{experiment_id}/events HTTP/1.1\r\nHost: {base.host}\r\n"
        f"Authorization: {authorization}\r\nAccept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    try:
        pending = await reader.read(1 << 16)
        if not pending.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"event stream: {pending[:100]!r}")
        searched = 0
        while True:
            while (end := pending.find(b"\n\n", searched)) >= 0:
                frame, pending, searched = pending[:end], pending[end + 2 :], 0
                if b": stream open" in frame:
                    seen.opened += 1
                elif (at := frame.rfind(b"\nid: ")) >= 0:
                    seen.arrivals.append((int(frame[at + 5 :].split(b"\n", 1)[0]), time.time()))
            chunk = await reader.read(1 << 16)
            if not chunk:
                return
            searched = max(0, len(pending) - 1)  # no frame ends before: search only new bytes
            pending += chunk
    finally:
        writer.close()


async def poll(
    client: httpx.AsyncClient, experiment_id: str, interval: float, seen: Viewers
) -> None:
    """A page being (re)loaded every `interval` s: its metrics, then the experiment."""
    calls = {
        "page metrics": f"/api/experiments/{experiment_id}/metrics",
        "experiment": f"/api/experiments/{experiment_id}",
    }
    while True:
        for label, path in calls.items():
            start = time.perf_counter()
            response = await client.get(path, headers=HEADERS)
            seen.requests.setdefault(label, []).append(time.perf_counter() - start)
            if response.status_code != 200:
                seen.errors.append(f"{label}: HTTP {response.status_code}")
        await asyncio.sleep(interval)


def viewers_load(
    base: str, experiment_id: str, n_streams: int, n_pollers: int, interval: float, seen: Viewers
) -> Any:
    async def load(seconds: float) -> None:
        limits = httpx.Limits(max_connections=n_pollers + 5)
        async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
            url = httpx.URL(base)
            tasks = [asyncio.create_task(watch(url, experiment_id, seen)) for _ in range(n_streams)]
            tasks += [
                asyncio.create_task(poll(client, experiment_id, interval, seen))
                for _ in range(n_pollers)
            ]
            await asyncio.sleep(seconds)
            for task in tasks:
                task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if not isinstance(outcome, asyncio.CancelledError | type(None)):
                    seen.errors.append(repr(outcome))

    return load


def event_latencies(url: str, experiment_id: str, arrivals: list[tuple[int, float]]) -> list[float]:
    """Arrival minus the event's `created_at` (written by the worker), for every delivery."""
    if not arrivals:
        return []
    ids = [event_id for event_id, _ in arrivals]
    with session_scope(url) as session:
        created = dict(
            session.execute(
                select(Event.id, Event.created_at).where(
                    Event.experiment_id == experiment_id, Event.id.between(min(ids), max(ids))
                )
            ).all()
        )
    return [arrived - created[event_id].timestamp() for event_id, arrived in arrivals]


# --- the benchmark ---------------------------------------------------------------------------


def start_runs(the_lab: Lab, args: argparse.Namespace) -> tuple[str, list[str]]:
    """Start the workers, send the 4 runs and wait until every one has stored steps."""
    specs = [
        run_spec(**RUN, optimizer=OPTIMIZERS[i % len(OPTIMIZERS)], seed=i, dataset="digits8x8")
        for i in range(4)
    ]
    run_ids = the_lab.create(*specs, name="bench load")
    for _ in range(args.workers):  # one after another: the filesystem broker's exchange
        the_lab.start_worker()  # table is not safe against workers declaring it at once
    the_lab.send(*run_ids)
    deadline = time.monotonic() + 120
    while min(steps_stored(the_lab.url, run_ids).values(), default=0) < 100:
        if time.monotonic() > deadline:
            raise TimeoutError("the runs did not start")
        time.sleep(0.5)
    with session_scope(the_lab.url) as session:
        experiment_id = session.scalar(select(Run.experiment_id).where(Run.id == run_ids[0]))
    return experiment_id, run_ids


async def measure(
    the_lab: Lab, base: str, api_pid: int, experiment_id: str, run_ids: list[str], args: Any
) -> tuple[list[Phase], Viewers]:
    seen = Viewers()
    load = viewers_load(base, experiment_id, args.viewers, args.pollers, args.poll_interval, seen)
    phases = [
        await run_phase("before", args.phase_seconds, the_lab.url, run_ids, api_pid),
        await run_phase("viewers", args.phase_seconds, the_lab.url, run_ids, api_pid, load),
        await run_phase("after", args.phase_seconds, the_lab.url, run_ids, api_pid),
    ]
    return phases, seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase-seconds", type=float, default=40.0)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--pollers", type=int, default=3)
    # Under uvicorn's keep-alive timeout (5 s): a reload reuses its connection, as a browser's.
    parser.add_argument("--poll-interval", type=float, default=3.0, help="s between reloads")
    parser.add_argument("--workers", type=int, default=4, help="each trains one run at a time")
    add_server_option(parser)
    args = parser.parse_args(argv)

    with (
        scratch_home(args.server, "load") as (url, home),
        lab(home, KFAC_DATABASE_URL=url, KFAC_ADMIN_TOKEN=TOKEN) as the_lab,
    ):
        experiment_id, run_ids = start_runs(the_lab, args)
        with running_api(url, home) as (api, base):
            phases, seen = asyncio.run(
                measure(the_lab, base, api.pid, experiment_id, run_ids, args)
            )
            api_rss, api_peak = rss_mb(api.pid)
        with session_scope(url) as session:
            runs = [session.get(Run, run_id) for run_id in run_ids]
            stopped = [
                f"{run.label}: {run.status} {run.error or ''}".strip()
                for run in runs
                if run.status != "running"
            ]
        results = {
            "settings": {**vars(args), "load_average": os.getloadavg()[0]},
            "phases": worker_speed(the_lab, phases),
            "events": summary(event_latencies(url, experiment_id, seen.arrivals)),
            "requests": {label: summary(values) for label, values in seen.requests.items()},
            "streams_opened": seen.opened,
            "errors": seen.errors[:20],
            "runs_stopped": stopped,
            "api_rss_mb": api_rss,
            "api_peak_rss_mb": api_peak,
        }
    write_results("load", results)
    return report(results)


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": 1e3 * percentile(values, 0.5),
        "p95_ms": 1e3 * percentile(values, 0.95),
        "max_ms": 1e3 * max(values),
    }


def report(results: dict[str, Any]) -> int:
    """Print the Markdown section; 0 if the viewers cost the workers less than the goal."""
    s, phases = results["settings"], results["phases"]
    idle = {key: (phases["before"][key] + phases["after"][key]) / 2 for key in phases["before"]}
    cost = 1 - phases["viewers"]["steps_per_s"] / idle["steps_per_s"]
    step_ratio = phases["viewers"]["step_time_ms"] / idle["step_time_ms"]
    print(
        f"## Load: {s['viewers']} event streams and {s['pollers']} polling pages on one "
        f"experiment while its 4 runs train ({s['workers']} workers), phases of "
        f"{s['phase_seconds']:.0f} s\n"
    )
    print("| phase | steps/s (4 runs) | median step time | API CPU | viewers' client CPU |")
    print("|---|---|---|---|---|")
    for name, p in phases.items():
        print(
            f"| {name} | {p['steps_per_s']:,.0f} | {p['step_time_ms']:.2f} ms | "
            f"{100 * p['api_cpu_share']:.0f}% of a core | {100 * p['client_cpu_share']:.0f}% |"
        )
    print(
        f"\nWith viewers, against the mean of `before` and `after`: workers' steps/s "
        f"{-100 * cost:+.1f}%, recorded step time x{step_ratio:.3f}.\n"
    )
    print("| measure | n | p50 | p95 | max |")
    print("|---|---|---|---|---|")
    rows = {"event: worker write -> arrival on a stream": results["events"]}
    rows |= {f"GET {label}": r for label, r in results["requests"].items()}
    for label, r in rows.items():
        if r["n"]:
            print(
                f"| {label} | {r['n']:,} | {r['p50_ms']:.0f} ms | {r['p95_ms']:.0f} ms | "
                f"{r['max_ms']:.0f} ms |"
            )
    print(
        f"\nStreams opened: {results['streams_opened']} of {s['viewers']}; API RSS at the end "
        f"{results['api_rss_mb']:.0f} MB (peak {results['api_peak_rss_mb']:.0f} MB); runs "
        f"that stopped before the end: {results['runs_stopped'] or 'none'}; errors: "
        f"{results['errors'] or 'none'}. Load average at the end: {s['load_average']:.1f} on "
        f"{os.cpu_count()} CPUs."
    )
    ok = cost < GOAL_COST and not results["runs_stopped"] and not results["errors"]
    print(f"Goal: viewers cost the workers < {100 * GOAL_COST:.0f}%: {'met' if ok else 'MISSED'}.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
