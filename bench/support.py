"""What the API benchmarks share: a real API process on loopback, a database to fill or reuse,
the timing loop over requests, the statistics they report and the machine's load beside them.

The API runs as `python -m uvicorn backend.api.main:app` in a child process, as it would in
production (one process, no reload), against the database a benchmark filled, with a known
admin token; benchmarks talk to it over HTTP like a browser does.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine

from backend.store.db import session_scope
from backend.store.listing import list_experiments
from backend.store.migrate import scratch_database

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"
"""Where the benchmarks write their JSON and plots."""
TOKEN = "bench-admin-token"
SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def add_server_option(parser: argparse.ArgumentParser) -> None:
    """`--server`: the PostgreSQL server on which a benchmark makes (and drops) its database."""
    parser.add_argument("--server", default=SERVER, help="PostgreSQL URL (default: %(default)s)")


def write_results(name: str, results: dict[str, Any]) -> None:
    """Keep a benchmark's figures as docs/bench/NAME.json."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=1))


def print_goal(met: bool) -> int:
    """The closing lines of a benchmark's report: the load now and whether the goal is met;
    the exit status (1: missed)."""
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"goal: {'met' if met else 'MISSED'}")
    return 0 if met else 1


def at_least_two(text: str) -> int:
    """An argparse type: a count of timed requests, two at least for a 95th percentile."""
    if int(text) < 2:
        raise argparse.ArgumentTypeError("must be at least 2")
    return int(text)


def add_database_options(parser: argparse.ArgumentParser, points: int) -> None:
    """`--points` per series of the experiment `filled_database` writes, `--server`, and
    `--database`: a database filled by an earlier run, to reuse."""
    parser.add_argument("--points", type=int, default=points, help="per series")
    add_server_option(parser)
    parser.add_argument("--database", help="reuse this already filled database (not dropped)")


@contextmanager
def scratch_home(server: str, name: str) -> Iterator[tuple[str, Path]]:
    """A new database on `server` and a temporary folder for the lab's files (`KFAC_HOME`),
    both gone on the way out."""
    with (
        scratch_database(server, prefix="kfac_bench") as url,
        tempfile.TemporaryDirectory(prefix=f"kfac-bench-{name}-") as home,
    ):
        yield url, Path(home)


@contextmanager
def running_api(url: str, home: Path, root: Path = ROOT) -> Iterator[tuple[subprocess.Popen, str]]:
    """The API against the database `url` (see `start_api`), stopped on the way out."""
    process, base = start_api(url, home, root)
    try:
        yield process, base
    finally:
        process.terminate()
        process.wait(timeout=30)


def start_api(url: str, home: Path, root: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """Start the API of the checkout at `root` (this one by default) on a free loopback port
    against `url`; returns the process and its base URL once `/healthz` answers. The caller
    terminates the process (or uses `running_api`)."""
    port = free_port()
    env = {
        **os.environ,
        "KFAC_DATABASE_URL": url,
        "KFAC_ADMIN_TOKEN": TOKEN,
        "KFAC_HOME": str(home),
        "PYTHONPATH": str(root),
    }
    command = [sys.executable, "-m", "uvicorn", "backend.api.main:app", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "2"]
    process = subprocess.Popen(command, cwd=root, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the API did not start")
        time.sleep(0.2)


def rss_mb(pid: int) -> tuple[float, float]:
    """Current and peak resident memory of a process, MB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_requests(
    client: httpx.Client, calls: Sequence[tuple[str, dict[str, Any]]], api_pid: int
) -> tuple[dict[str, float], httpx.Response]:
    """GET every `(path, query)` of `calls` in turn; the median and 95th percentile of their
    times (`p50_ms`, `p95_ms`) and the API process's CPU time per request (`cpu_ms`), which
    other load on the machine barely changes (the database's share is not in it); and the last
    answer."""
    timings = []
    cpu_before = cpu_seconds(api_pid)
    for path, query in calls:
        start = time.perf_counter()
        response = client.get(path, params=query)
        timings.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    figures = {
        "p50_ms": statistics.median(timings),
        "p95_ms": percentile(timings, 0.95),
        "cpu_ms": (cpu_seconds(api_pid) - cpu_before) * 1000 / len(calls),
    }
    return figures, response


@contextmanager
def filled_database(
    args: argparse.Namespace, name: str, fill: Callable[[str, int], str]
) -> Iterator[tuple[str, str]]:
    """(URL, experiment id) of a database holding the experiment called `name`, from the
    options of `add_database_options`: `--database` as it is when given (filled by an earlier
    run and kept), else a new database on `--server` that `fill(url, points)` fills (it returns
    what it stored, for the log) and that is dropped on the way out."""
    if args.database:
        yield args.database, experiment_named(args.database, name)
        return
    with scratch_database(args.server, prefix="kfac_bench") as url:
        start = time.perf_counter()
        stored = fill(url, args.points)
        print(f"stored {stored} in {time.perf_counter() - start:.0f} s")
        yield url, experiment_named(url, name)


@contextmanager
def api_on_filled_database(
    args: argparse.Namespace, name: str, fill: Callable[[str, int], str]
) -> Iterator[tuple[str, str, subprocess.Popen, str]]:
    """`filled_database`'s database with the API running on it: (database URL, experiment id,
    API process, API base URL)."""
    with (
        filled_database(args, name, fill) as (url, experiment_id),
        tempfile.TemporaryDirectory(prefix="kfac-bench-") as home,
        running_api(url, Path(home)) as (process, base),
    ):
        yield url, experiment_id, process, base


def experiment_named(url: str, name: str) -> str:
    with session_scope(url) as session:
        return list_experiments(session, name=name, limit=1)[0][0].id


def vacuum_analyze(url: str) -> None:
    """What autovacuum does after a bulk load: the planner's statistics, the visibility map."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


class LoadAverage:
    """The machine's 1-minute load average at the start and at the end of a measurement: a
    wall time on a shared machine means little without it.

        with LoadAverage() as load:
            ...measure...
        print(load)    # "load average 3.2 at the start, 5.1 at the end, on 2 CPUs"
    """

    def __enter__(self) -> LoadAverage:
        self.start = self.end = os.getloadavg()[0]
        return self

    def __exit__(self, *exc: object) -> None:
        self.end = os.getloadavg()[0]

    def as_dict(self) -> dict[str, float]:
        return {"load_start": self.start, "load_end": self.end}

    def __str__(self) -> str:
        return (
            f"load average {self.start:.1f} at the start, {self.end:.1f} at the end, "
            f"on {os.cpu_count()} CPUs"
        )


def print_table(rows: Sequence[tuple[str, str, str]], load: str, ok: dict[str, bool]) -> None:
    """The benchmarks' plain-text table: measure, value, goal; then the load and the goals."""
    width = max(len(row[0]) for row in rows)
    print(f"\n{'measure':<{width}}  {'value':>22}  goal")
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:>22}  {goal}")
    print(load)
    print("goals: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in ok.items()))
