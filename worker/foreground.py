"""`kfac-lab run`: an experiment trained in this process, one run after another, on the console.

The same training loop as the worker (`worker.training.train`) with a `ConsoleRecorder` that
drives one rich progress bar per run and keeps the latest values for the final table. By
default every run is also recorded, as a tracked run of the experiment's name, in this
machine's store or, with `KFAC_LAB_URL` set, on that server (worker/reporting.py), so the
dashboard shows it; `--no-record` keeps it on the console. No checkpoints are written. The
first Ctrl-C ends the current run as `cancelled` and skips the rest (the table is still
printed); a second one interrupts at once.
"""

from __future__ import annotations

import math
import signal
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backend.settings import get_settings
from backend.spec import ExperimentSpec
from worker.reporting import Tee, report_for
from worker.training import MetricPoint, Recorder, RunResult, train

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class ConsoleRecorder:
    """A `Recorder` that shows a run's progress and keeps the last value of each metric."""

    def __init__(self, bars: Progress, task: Any):
        self.bars, self.task = bars, task
        self.latest: dict[str, float] = {}
        self.snapshots = 0

    def info(self, details: dict[str, Any]) -> None:
        self.bars.update(self.task, total=details["total_steps"], info=details["device"])

    def metrics(self, points: list[MetricPoint]) -> None:
        for name, _, _, value in points:
            self.latest[name] = value
        if "train_loss" in self.latest:
            self.bars.update(self.task, info=f"loss {self.latest['train_loss']:.4g}")

    def snapshot(self, step: int, payload: dict[str, Any]) -> None:
        self.snapshots += 1

    def progress(self, step: int) -> None:
        self.bars.update(self.task, completed=step)

    def sync(self) -> bool:
        return True


def run_experiment(experiment: ExperimentSpec, console: Console, *, record: bool = True) -> int:
    """Train every run of `experiment` in turn; print a table; return the exit code. With
    `record`, each run is also reported (worker/reporting.py) so the dashboard shows it."""
    settings = get_settings()
    interrupted = _FirstInterrupt()
    results: list[tuple[str, RunResult | None]] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
    )
    console.print(f"[bold]{experiment.name}[/bold]: {len(experiment.runs)} runs")
    with interrupted, Progress(*columns, console=console) as progress:
        tasks = [
            progress.add_task(
                spec.display_label(), total=spec.total_steps(), info="waiting", start=False
            )
            for spec in experiment.runs
        ]
        for spec, task in zip(experiment.runs, tasks, strict=True):
            if interrupted.flag:
                results.append((spec.display_label(), None))
                progress.update(task, info="skipped")
                continue
            progress.start_task(task)
            recorder: Recorder = ConsoleRecorder(progress, task)
            report = report_for(settings, experiment.name, spec) if record else None
            if report is not None:
                recorder = Tee(recorder, report)
            result = train(
                spec, recorder, should_stop=lambda: interrupted.flag, data_dir=settings.data_dir
            )
            if report is not None and not report.end(result):
                console.print(f"[yellow]{spec.display_label()}: not everything was recorded")
            progress.update(task, completed=result.step, info=result.status)
            progress.stop_task(task)
            results.append((spec.display_label(), result))
    console.print(_table(results))
    if interrupted.flag:
        return EXIT_INTERRUPTED
    failed = any(result is None or result.status == "failed" for _, result in results)
    return EXIT_FAILED if failed else EXIT_OK


def _table(results: list[tuple[str, RunResult | None]]) -> Table:
    table = Table("run", "status", "steps", "train loss", "test loss", "time (s)", "note")
    for label, result in results:
        if result is None:
            table.add_row(label, "skipped", "", "", "", "", "")
            continue
        color = {"succeeded": "green", "diverged": "yellow"}.get(result.status, "red")
        table.add_row(
            label,
            f"[{color}]{result.status}[/{color}]",
            str(result.step),
            _number(result.final.get("train_loss")),
            _number(result.final.get("test_loss")),
            f"{result.wall_time:.1f}",
            result.reason or "",
        )
    return table


def _number(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.4f}"


class _FirstInterrupt:
    """Within the block, the first SIGINT only sets `flag`; the next one interrupts."""

    def __init__(self) -> None:
        self.flag = False
        self._previous: Any = None

    def _handle(self, _signum: int, _frame: object) -> None:
        self.flag = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> _FirstInterrupt:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)
