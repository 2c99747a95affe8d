"""What a training run reports through, and how it ends: the contract between the training
loop (worker/training.py) and the places its results go — the store's `StoreRecorder` (worker
/recording.py), the console's (worker/foreground.py), a CLI run's report (worker/reporting.py)
and `MemoryRecorder` here, for tests, notebooks and the CLI's final table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

MetricPoint = tuple[str, int, float, float]  # (name, step, wall_time, value)
Status = Literal["succeeded", "failed", "diverged", "cancelled"]


class Recorder(Protocol):
    """Where a run's results go. Every write must be idempotent per (run, name, step)."""

    def info(self, details: dict[str, Any]) -> None:
        """Once per start: data source, parameter count, device, resumed step."""

    def metrics(self, points: list[MetricPoint]) -> None:
        """A batch of metric points, in step order."""

    def snapshot(self, step: int, payload: dict[str, Any]) -> None:
        """A curvature snapshot (plain lists / numpy arrays, see worker.snapshots)."""

    def progress(self, step: int) -> None:
        """The last completed step (also a good moment for a heartbeat)."""

    def sync(self) -> bool:
        """Block until everything recorded so far is stored; False if it cannot be now.

        Called before each checkpoint: a run resumed from a checkpoint re-sends only the points
        after it, so the points before it must be stored first. On False the checkpoint is
        skipped (the next one tries again) and training goes on."""


def never() -> bool:
    return False


@dataclass(frozen=True)
class RunControls:
    """How one attempt at a run is carried out, apart from its spec: where its checkpoints go
    (None: none) and whether it resumes from them, where the data files lie (None: the
    default), what asks it to stop and the wall-clock limit of the attempt (None: none)."""

    checkpoint_dir: Path | None = None
    should_stop: Callable[[], bool] = never
    resume: bool = True
    data_dir: Path | None = None
    time_limit_s: float | None = None


@dataclass
class RunResult:
    status: Status
    step: int
    reason: str | None = None
    final: dict[str, float] = field(default_factory=dict)
    wall_time: float = 0.0
    resumed_from: int | None = None


@dataclass
class MemoryRecorder:
    """Keeps everything in memory: for tests, notebooks and the CLI's final table."""

    details: dict[str, Any] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    snapshots: dict[int, dict[str, Any]] = field(default_factory=dict)
    last_step: int = 0

    def info(self, details: dict[str, Any]) -> None:
        self.details.update(details)

    def metrics(self, points: list[MetricPoint]) -> None:
        for name, step, _, value in points:
            self.series.setdefault(name, {}).setdefault(step, value)

    def snapshot(self, step: int, payload: dict[str, Any]) -> None:
        self.snapshots.setdefault(step, payload)

    def progress(self, step: int) -> None:
        self.last_step = step

    def sync(self) -> bool:
        return True
