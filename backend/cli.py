"""`kfac-lab`: the command line (serve the lab, start a worker, run an experiment here).

* `kfac-lab serve` — the whole lab on one machine: migrates the database, starts the API (which
  serves the pages) and, in embedded mode, a worker process; prints the URL with the access
  token, as Jupyter does; Ctrl-C or SIGTERM stops all of it.
* `kfac-lab worker` — a Celery worker that trains runs from the queue(s).
* `kfac-lab run SPEC.json | --preset NAME` — one experiment in the foreground, no server.

Mode and paths come from the `KFAC_*` settings (backend/settings.py). Nothing heavy is imported
at module level: torch and the worker are loaded inside the commands that train, so `serve`
in a team deployment (with no worker of its own) starts fast and stays small.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from backend.settings import get_settings

app = typer.Typer(
    help="kfac-lab: a web lab for K-FAC / KFC second-order optimisation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

STOP_TIMEOUT_S = 20.0  # a worker hands its runs back within a second or two; then it is killed
GRACEFUL_SHUTDOWN_S = 3.0  # then open event streams are closed (pages reconnect and resume)


class _Stop(Exception):
    """Raised by our SIGINT / SIGTERM handlers in the main thread."""


# --- serve ----------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker",
            help="Also start a worker process. Default: yes in embedded mode, no when "
            "KFAC_BROKER_URL is set (team mode, where workers run on their own).",
        ),
    ] = None,
) -> None:
    """Serve the lab: API + pages, and in embedded mode a worker; Ctrl-C stops everything."""
    import uvicorn

    from backend.store.migrate import upgrade

    settings = get_settings()
    start_worker = not settings.broker_url if worker is None else worker
    _stop_on_signals()
    supervisor: _WorkerSupervisor | None = None
    try:
        upgrade(settings.database_url)
        token = settings.admin_token or _stored_admin_token()
        if start_worker:
            supervisor = _WorkerSupervisor([sys.executable, "-m", "backend.cli", "worker"])
            supervisor.start()
        config = uvicorn.Config(
            "backend.api.main:app",
            host=host,
            port=port,
            # Open event streams never end by themselves: stop waiting for them after a while.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        server = uvicorn.Server(config)
        threading.Thread(target=_announce, args=(server, host, port, token), daemon=True).start()
        server.run()  # handles SIGINT / SIGTERM itself, then re-raises them to our handlers
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        if supervisor is not None:
            console.print("Stopping the worker…")
            supervisor.stop()


def _stored_admin_token() -> str:
    from backend.store.access import get_or_create_admin_token
    from backend.store.db import session_scope

    with session_scope() as session:
        return get_or_create_admin_token(session)


def _announce(server: Any, host: str, port: int, token: str) -> None:
    """Print the address once the server listens (as Jupyter does, with the token)."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    public = get_settings().public_url
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = public.rstrip("/") if public else f"http://{shown}:{port}"
    console.print(
        f"\n  kfac-lab is running. Open this address (it carries your access token):\n\n"
        f"    [bold]{base}/?token={token}[/bold]\n\n  Press Ctrl-C to stop.\n",
        highlight=False,
        soft_wrap=True,
    )


def _stop_on_signals() -> None:
    def handler(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


class _WorkerSupervisor:
    """`kfac-lab worker` as a child process of `serve`: restarted if it dies, stopped (SIGTERM,
    then SIGKILL of its whole process group after `STOP_TIMEOUT_S`) when serve ends.

    The child gets a session of its own, so a Ctrl-C in the terminal reaches only `serve`, which
    then stops the worker exactly once. Should `serve` itself be killed, Linux sends the worker
    SIGTERM (PR_SET_PDEATHSIG, tied to the supervising thread, which lives as long as `serve`).
    """

    def __init__(self, argv: list[str]):
        self.argv = argv
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="worker-supervisor")

    def start(self) -> None:
        self._thread.start()

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                self._process = subprocess.Popen(
                    self.argv, start_new_session=True, preexec_fn=_die_with_parent()
                )
            code = self._process.wait()
            if self._stopping.wait(0):
                return
            errors.print(f"[yellow]The worker exited with code {code}; restarting it in 2 s.")
            if self._stopping.wait(2.0):
                return

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                errors.print("[yellow]The worker did not stop in time; killing it.")
            _kill_group(process)
        self._thread.join()


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL whatever is left of the process's group (its pool children included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _die_with_parent() -> Any:
    """A preexec_fn asking Linux to SIGTERM the child when its parent thread dies (no-op
    elsewhere). libc is loaded here, before the fork: the child only makes one call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


# --- worker ---------------------------------------------------------------------------------


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues to take runs from. Default: cpu, and gpu first when "
            "this machine has a CUDA GPU."
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Runs trained at once (one process each).")
    ] = 1,
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """Start a worker that trains the runs sent to its queues."""
    from worker.celery_app import app as celery

    argv = [
        "worker",
        f"--queues={queues or _default_queues()}",
        f"--concurrency={concurrency}",
        f"--loglevel={loglevel}",
        f"--hostname=kfac-{os.getpid()}@%h",
        "--without-mingle",  # revoked ids need no sync: a cancelled run is final in the store
        "--without-gossip",
    ]
    celery.worker_main(argv)


def _default_queues() -> str:
    """`gpu,cpu` when CUDA works here, else `cpu`. Asked of a short-lived subprocess, so this
    process (the worker's parent, which forks the pool) never creates a CUDA context."""
    import torch

    if not torch.backends.cuda.is_built():
        return "cpu"
    probe = "import torch; print(torch.cuda.device_count())"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    has_gpu = result.returncode == 0 and result.stdout.strip() not in ("", "0")
    return "gpu,cpu" if has_gpu else "cpu"


# --- run ------------------------------------------------------------------------------------


@app.command()
def run(
    spec: Annotated[
        Path | None,
        typer.Argument(
            help='An experiment spec (JSON): a full spec, or {"preset": NAME, "overrides": {}}.'
        ),
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Run a named preset instead of a spec file.")
    ] = None,
    override: Annotated[
        str | None,
        typer.Option(
            help='JSON object applied to the preset, as the API\'s "overrides": run fields go '
            "into every run (e.g. '{\"steps\": 50}'); name, description, optimizers and seeds "
            "replace the experiment's."
        ),
    ] = None,
) -> None:
    """Run one experiment here in the foreground, with a progress bar; no server needed."""
    experiment = _load_experiment(spec, preset, override)
    from worker.foreground import run_experiment  # imports torch

    raise typer.Exit(run_experiment(experiment, console))


def _load_experiment(spec: Path | None, preset: str | None, override: str | None) -> Any:
    """The validated ExperimentSpec; any error is printed and exits with code 2."""
    from backend.presets import PRESETS, expand_preset
    from backend.spec import ExperimentSpec

    if (spec is None) == (preset is None):
        _usage_error("give a spec file or --preset NAME (one of them)")
    if override is not None and preset is None:
        _usage_error("--override applies to --preset")
    try:
        if spec is not None:
            data = json.loads(spec.read_text())
            if isinstance(data, dict) and "preset" in data:
                preset, overrides = data.pop("preset"), data.pop("overrides", None) or {}
                return expand_preset(preset, {**data, **overrides})
            return ExperimentSpec.model_validate(data)
        overrides = json.loads(override) if override else None
        if overrides is not None and not isinstance(overrides, dict):
            _usage_error("--override must be a JSON object")
        return expand_preset(preset, overrides)
    except KeyError:
        _usage_error(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    except OSError as error:
        _usage_error(f"cannot read {spec}: {error.strerror}")
    except json.JSONDecodeError as error:
        _usage_error(f"invalid JSON: {error}")
    except ValidationError as error:
        table = Table("field", "error", title="Invalid experiment spec", title_justify="left")
        for problem in error.errors():
            table.add_row(".".join(map(str, problem["loc"])) or "(spec)", problem["msg"])
        errors.print(table)
        raise typer.Exit(2) from None


def _usage_error(message: str) -> None:
    errors.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


if __name__ == "__main__":
    app()
