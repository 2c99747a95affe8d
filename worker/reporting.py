"""Where `kfac-lab run` reports its runs, so that a CLI run appears in the dashboard.

Each run becomes a tracked run (backend/store/tracking.py) of the experiment of the same name,
with the full run spec as its config:

* with `KFAC_LAB_URL` set, through the tracking client to that server (`kfac_lab`, spooled and
  retried like any script's run; `KFAC_LAB_TOKEN` is the server's admin token);
* otherwise into this machine's store (`KFAC_DATABASE_URL`, by default the SQLite file that
  `kfac-lab serve` shows), through the worker's `StoreRecorder`.

A `Report` is a `Recorder` (worker.training) that the console's recorder is teed with, plus
`end(result)`, which stores the outcome once everything before it is stored.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol

from backend.settings import Settings
from backend.spec import RunSpec
from backend.store import tracking
from backend.store.db import session_scope
from backend.store.migrate import upgrade
from backend.store.models import new_id
from worker.recording import StoreRecorder
from worker.run_types import MetricPoint, Recorder, RunResult

FINAL_WRITE_TIMEOUT_S = 120.0


class Report(Recorder, Protocol):
    def end(self, result: RunResult) -> bool:
        """Store the outcome after everything recorded; False if not all was stored."""


def report_for(settings: Settings, experiment: str, spec: RunSpec) -> Report:
    """A report of one run of `experiment`: to `KFAC_LAB_URL` if set, else to the store."""
    if os.environ.get("KFAC_LAB_URL"):
        return ServerReport(experiment, spec)
    return StoreReport(settings.database_url, experiment, spec)


def _start_fields(experiment: str, spec: RunSpec) -> dict[str, Any]:
    return {
        "experiment": experiment,
        "label": spec.display_label(),
        "config": spec.model_dump(mode="json"),
        "seed": spec.seed,
        "total_steps": spec.total_steps(),
    }


class StoreReport(StoreRecorder):
    """Into the store directly, as a worker records (idempotent writes, a writer thread)."""

    def __init__(self, database_url: str, experiment: str, spec: RunSpec):
        upgrade(database_url)  # a first `kfac-lab run` on a machine creates the store
        run_id = new_id()
        with session_scope(database_url) as session:
            tracking.start_run(
                session,
                run_id=run_id,
                optimizer=spec.optimizer.model_dump(mode="json"),
                client=f"cli:{socket.gethostname()}:{os.getpid()}",
                **_start_fields(experiment, spec),
            )
        super().__init__(run_id, database_url)

    def end(self, result: RunResult) -> bool:
        if not self.close(FINAL_WRITE_TIMEOUT_S):
            return False
        with session_scope(self.url) as session:
            tracking.end_run(
                session,
                self.run_id,
                result.status,
                error=result.reason,
                step=result.step,
                final_metrics=result.final,
            )
        return True


class ServerReport:
    """To a lab's server through the tracking client (wall times are the client's clock)."""

    def __init__(self, experiment: str, spec: RunSpec):
        import kfac_lab

        fields = _start_fields(experiment, spec)
        self.run = kfac_lab.init(fields.pop("experiment"), **fields)

    def info(self, details: dict[str, Any]) -> None:
        """Known to the server from the spec already."""

    def metrics(self, points: list[MetricPoint]) -> None:
        by_step: dict[int, dict[str, float]] = {}
        for name, step, _, value in points:
            by_step.setdefault(step, {})[name] = value
        for step, values in by_step.items():
            self.run.log(step, **values)

    def snapshot(self, step: int, payload: dict[str, Any]) -> None:
        self.run.record_snapshot(step, payload)

    writer_thread = None  # the client's sender logs on `kfac_lab`, which run logs leave out

    def log(self, lines: list[tuple[float, str, str]]) -> None:
        """Log lines of the run (worker.run_logs), sent as the script's own lines."""
        for _, level, message in lines:
            self.run.log_text(message, level)

    def progress(self, step: int) -> None:
        """The server learns progress from the metrics."""

    def sync(self) -> bool:
        return True  # the CLI writes no checkpoints

    def end(self, result: RunResult) -> bool:
        return self.run.end(result.status, result.reason, timeout=FINAL_WRITE_TIMEOUT_S)


class Tee:
    """Every record to both recorders (the console's and a report)."""

    def __init__(self, first: Recorder, second: Recorder):
        self.recorders = (first, second)

    def info(self, details: dict[str, Any]) -> None:
        for recorder in self.recorders:
            recorder.info(details)

    def metrics(self, points: list[MetricPoint]) -> None:
        for recorder in self.recorders:
            recorder.metrics(points)

    def snapshot(self, step: int, payload: dict[str, Any]) -> None:
        for recorder in self.recorders:
            recorder.snapshot(step, payload)

    def progress(self, step: int) -> None:
        for recorder in self.recorders:
            recorder.progress(step)

    def sync(self) -> bool:
        return all([recorder.sync() for recorder in self.recorders])
