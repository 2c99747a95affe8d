"""Benchmark: what `kfac_lab.Run.log` costs a training loop (goal: <= 20 µs per call).

A real API server (uvicorn, in a process of its own, on a scratch SQLite file) and a tracked
run logging three metrics per call, as a training script does, while the client's background
thread turns them into batches, spools them to disk and sends them. Side by side, in
alternating rounds (A B A B ...) so both see the same machine load:

* `bare`  — the same loop appending the same values to a list: the floor of any logging;
* `log`   — the loop calling `run.log(step, train_loss=..., lr=..., grad_norm=...)`.

Reports the median, mean and 99th percentile of the per-call time of `log` (over chunks of
1,000 calls), its ratio to `bare`, and, once all rounds are logged, how long `finish()` takes
to get every point stored (points per second end to end).

    python -m bench.bench_tracking [--calls 200000] [--rounds 5]

The mean is what a loop pays; the p99 shows the chunks during which the background thread
held the GIL (at this synthetic rate, ~100,000 calls a second, it batches large drains).
Prints a Markdown section and exits with status 1 if the mean exceeds the goal.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import kfac_lab
from backend.store.migrate import upgrade

GOAL_US = 20.0
CHUNK = 1000
TOKEN = "bench-tracking-token"


def serve(home: Path) -> tuple[subprocess.Popen, str]:
    """An API server on a free port, in its own process; returns it and its URL."""
    database = f"sqlite:///{home / 'kfac.db'}"
    upgrade(database)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "KFAC_HOME": str(home),
        "KFAC_DATABASE_URL": database,
        "KFAC_ADMIN_TOKEN": TOKEN,
    }
    command = [
        *(sys.executable, "-m", "uvicorn", "backend.api.main:app"),
        *("--port", str(port), "--log-level", "warning"),
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2)
            return process, url
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit("the API server did not start") from None
            time.sleep(0.2)


def per_call_us(calls: int, body) -> list[float]:
    """Microseconds per call of `body(step)`, one figure per chunk of CHUNK calls."""
    figures = []
    for start in range(0, calls, CHUNK):
        began = time.perf_counter()
        for step in range(start, start + CHUNK):
            body(step)
        figures.append((time.perf_counter() - began) / CHUNK * 1e6)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000, help="log calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kfac-bench-tracking-") as tmp:
        home = Path(tmp)
        server, url = serve(home)
        try:
            run = kfac_lab.init(
                "bench tracking", label="log", url=url, token=TOKEN, spool_dir=home / "spool"
            )
            sink: list = []
            bare_times, log_times = [], []
            offset = 0
            for _ in range(args.rounds):

                def bare(step: int, offset: int = offset) -> None:
                    sink.append((step + offset, 0.5, {"train_loss": 0.5, "lr": 0.1, "g": 1.0}))

                def log(step: int, offset: int = offset) -> None:
                    run.log(step + offset, train_loss=0.5, lr=0.1, grad_norm=1.0)

                bare_times += per_call_us(args.calls, bare)
                log_times += per_call_us(args.calls, log)
                sink.clear()
                offset += args.calls
            began = time.perf_counter()
            stored = run.finish(timeout=600)
            flush_s = time.perf_counter() - began
        finally:
            server.terminate()
            server.wait(30)
    median_log, median_bare = statistics.median(log_times), statistics.median(bare_times)
    p99 = statistics.quantiles(log_times, n=100)[98]
    points = 3 * args.calls * args.rounds
    mean_log, mean_bare = statistics.fmean(log_times), statistics.fmean(bare_times)
    print("| | per call, median | mean | p99 (chunks of 1,000) | median ratio to bare |")
    print("|---|---|---|---|---|")
    print(f"| bare list append | {median_bare:.2f} µs | {mean_bare:.2f} µs | | 1.00× |")
    print(
        f"| `run.log` (3 metrics) | {median_log:.2f} µs | {mean_log:.2f} µs | {p99:.2f} µs | "
        f"{median_log / median_bare:.2f}× |"
    )
    print(
        f"\n{args.calls * args.rounds:,} calls ({points:,} points); `finish()` then took "
        f"{flush_s:.1f} s to have the server store the rest ({'all' if stored else 'NOT all'} "
        f"stored). Goal: <= {GOAL_US:.0f} µs per call."
    )
    return 0 if mean_log <= GOAL_US and stored else 1


if __name__ == "__main__":
    sys.exit(main())
