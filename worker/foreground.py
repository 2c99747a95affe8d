"""`kfac-lab run`: an experiment trained in this process, one run after another, on the console.

The same training loop as the worker (`worker.training.train`) with a `ConsoleRecorder` that
drives one rich progress bar per run and keeps the series the final tables need: one row per
run, then the comparison of the groups (`backend.comparison`: the same groups, labels, colours
and statistics over seeds as the experiment page). By default every run is also recorded, as a
tracked run of the experiment's name, in this machine's store or, with `KFAC_LAB_URL` set, on
that server (worker/reporting.py), so the dashboard shows it, with its log (worker.run_logs);
`--no-record` keeps it on the console. No checkpoints are written. The first Ctrl-C ends the
current run as `cancelled` and skips the rest (the tables are still printed); a second one
interrupts at once.
"""

from __future__ import annotations

import contextlib
import math
import signal
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from backend.comparison import Points, comparison, group_runs
from backend.comparison_sources import SeriesSource
from backend.settings import get_settings
from backend.spec import ExperimentSpec
from worker.reporting import Tee, report_for
from worker.run_logs import capture_run_logs
from worker.run_types import MetricPoint, Recorder, RunControls, RunResult
from worker.training import train

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


COMPARED = "train_loss"  # the metric of the comparison table
KEPT = (COMPARED, "step_time", "examples_seen")  # the series the comparison reads


class ConsoleRecorder:
    """A `Recorder` that shows a run's progress, keeps the last value of each metric and the
    series of the `KEPT` ones."""

    def __init__(self, bars: Progress, task: Any):
        self.bars, self.task = bars, task
        self.latest: dict[str, float] = {}
        self.series: dict[str, Points] = {name: ([], [], []) for name in KEPT}
        self.snapshots = 0

    def info(self, details: dict[str, Any]) -> None:
        self.bars.update(self.task, total=details["total_steps"], info=details["device"])

    def metrics(self, points: list[MetricPoint]) -> None:
        for name, step, wall_time, value in points:
            self.latest[name] = value
            if name in self.series:
                for column, item in zip(self.series[name], (step, wall_time, value), strict=True):
                    column.append(item)
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
    series: dict[str, dict[str, Points]] = {}
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
            shown = ConsoleRecorder(progress, task)
            recorder: Recorder = shown
            report = report_for(settings, experiment.name, spec) if record else None
            if report is not None:
                recorder = Tee(recorder, report)
            with capture_run_logs(report) if report is not None else contextlib.nullcontext():
                controls = RunControls(
                    should_stop=lambda: interrupted.flag,
                    data_dir=settings.data_dir,
                    time_limit_s=settings.run_time_limit_s,
                )
                result = train(spec, recorder, controls)
            if report is not None and not report.end(result):
                console.print(f"[yellow]{spec.display_label()}: not everything was recorded")
            progress.update(task, completed=result.step, info=result.status)
            progress.stop_task(task)
            results.append((spec.display_label(), result))
            series[str(len(results) - 1)] = shown.series  # (a Tee has no series)
    console.print(_table(results))
    console.print(_comparison_table(experiment, results, series))
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


@dataclass(frozen=True)
class _Run:
    """A run as `backend.comparison.group_runs` reads it (ids are positions here)."""

    id: str
    spec: dict[str, Any]
    optimizer: dict[str, Any]
    status: str
    experiment_id: str = ""


def _comparison_table(
    experiment: ExperimentSpec,
    results: list[tuple[str, RunResult | None]],
    series: dict[str, dict[str, Points]],
) -> Table:
    runs = [
        _Run(
            str(i),
            spec.model_dump(mode="json"),
            spec.optimizer.model_dump(mode="json"),
            "queued" if result is None else result.status,
        )
        for i, (spec, (_, result)) in enumerate(zip(experiment.runs, results, strict=True))
    ]
    answer = comparison(SeriesSource(series), group_runs(runs), COMPARED)
    target = "none" if answer["target"] is None else f"{answer['target']:.4g}"
    table = Table(
        Column("configuration", no_wrap=True),  # a label is what the reader looks up
        "seeds", "final", "best", "steps to target", "step (ms)",
        title=f"{COMPARED}: mean ± sd over seeds; target {target}; ★ best of its optimizer",
    )  # fmt: skip
    for group in answer["groups"]:
        star = " ★" if group["best_of_optimizer"] else ""
        steps = group["steps_to_target"]
        never = f"{steps['never']} never" if steps["never"] else ""
        table.add_row(
            f"[{group['colour']}]■[/] {group['label']}{star}",
            f"{group['seeds']['finished']}/{group['seeds']['count']}",
            _mean_sd(group["final"]),
            _mean_sd(group["best"]),
            "; ".join(part for part in (_mean_sd(steps, ".3g"), never) if part),
            "" if group["step_time_ms"] is None else f"{group['step_time_ms']:.3g}",
        )
    return table


def _mean_sd(stat: dict[str, Any], form: str = ".4f") -> str:
    if stat["mean"] is None:
        return ""
    sd = "" if stat["sd"] is None else f" ± {stat['sd']:{form}}"
    return f"{stat['mean']:{form}}{sd}"


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
