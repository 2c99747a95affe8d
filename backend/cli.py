"""`kfac-lab serve`: the API side of the command line (`worker.cli` adds the commands that train).

* `kfac-lab serve` — the whole lab on one machine: migrates the database, starts the API (which
  serves the pages) and, in embedded mode, a worker process; prints the URL with the access
  token, as Jupyter does; Ctrl-C or SIGTERM stops all of it.

The `kfac-lab` console script is `worker.cli:app`: this app with `worker` and `run` added,
since those import torch and the worker, which the backend never does. `serve` starts its
worker as a child process (`python -m worker.cli worker`), so the API process stays free of
both. Mode and paths come from the `KFAC_*` settings (backend/settings.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Annotated, Any

import typer
from rich.console import Console

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

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            """uvicorn's signal handler: also start stopping the worker now, so that it hands
            its runs back while the API closes its connections, not after."""
            if supervisor is not None:
                supervisor.stop_soon()
            super().handle_exit(sig, frame)

    try:
        upgrade(settings.database_url)
        token = settings.admin_token or _stored_admin_token()
        if start_worker:
            supervisor = _WorkerSupervisor([sys.executable, "-m", "worker.cli", "worker"])
            supervisor.start()
        config = uvicorn.Config(
            "backend.api.main:app",
            host=host,
            port=port,
            # Open event streams never end by themselves: stop waiting for them after a while.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        server = Server(config)
        threading.Thread(target=_announce, args=(server, host, port, token), daemon=True).start()
        server.run()  # handles SIGINT / SIGTERM itself, then re-raises them to our handlers
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        _ignore_signals()  # a second Ctrl-C or SIGTERM must not break off the cleanup
        if supervisor is not None:
            console.print("Stopping the worker…")
            supervisor.stop()
        # Done. Python resets its own handlers to the default (terminate) while the interpreter
        # exits, so a late second signal would turn a clean exit into "killed by SIGTERM".
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


def _ignore_signals() -> None:
    def handler(signum: int, _frame: object) -> None:
        errors.print(f"{signal.Signals(signum).name}: already stopping")

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

    def stop_soon(self) -> None:
        """Start `stop` on a thread of its own (called from a signal handler)."""
        threading.Thread(target=self.stop, name="worker-stop", daemon=True).start()

    def stop(self) -> None:
        """SIGTERM the worker, SIGKILL what is left after `STOP_TIMEOUT_S`; wait for it. Safe to
        call twice, also at once from two threads."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            if process.poll() is None:
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
