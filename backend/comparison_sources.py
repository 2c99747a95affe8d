"""Where `backend.comparison.comparison` reads the runs' data: the store (the API, the report)
or series held in memory (the CLI's `kfac-lab run`). Both give the same quantities, so a
comparison is computed by one flow whatever its source."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence

from sqlalchemy.orm import Session

from backend.comparison import Points
from backend.store.comparison_reads import (
    crossing_points,
    median_values,
    metric_extremes,
    series_of_runs,
    values_at,
)
from backend.store.models import MetricSeries


class StoreSource:
    """The store's reads (`backend.store.comparison_reads`): never whole series. The runs'
    series are looked up once, all metrics together (each read is a round trip to the
    database, and on a busy machine every round trip waits for a CPU)."""

    def __init__(self, session: Session):
        self.session = session
        self._series: dict[str, dict[str, MetricSeries]] = {}  # run id → metric → series

    def _of(self, run_ids: Sequence[str], name: str) -> list[MetricSeries]:
        missing = [run_id for run_id in run_ids if run_id not in self._series]
        if missing:
            for run_id in missing:
                self._series[run_id] = {}
            for series in series_of_runs(self.session, missing):
                self._series[series.run_id][series.name] = series
        return [self._series[r][name] for r in run_ids if name in self._series[r]]

    def extremes(self, run_ids: list[str], metric: str) -> dict[str, tuple[float, float, float]]:
        return metric_extremes(self.session, self._of(run_ids, metric))

    def step_times(self, run_ids: list[str]) -> dict[str, float]:
        return median_values(self.session, self._of(run_ids, "step_time"))

    def around_crossing(
        self, run_ids: list[str], metric: str, target: float, higher: bool
    ) -> dict[str, Points]:
        return crossing_points(self.session, self._of(run_ids, metric), target, higher)

    def examples_at(self, steps: dict[str, list[int]]) -> dict[str, dict[int, float]]:
        return values_at(self.session, self._of(list(steps), "examples_seen"), steps)


class SeriesSource:
    """Whole series in memory: `{run_id: {metric: (steps, seconds, values)}}`."""

    def __init__(self, series: Mapping[str, Mapping[str, Points]]):
        self.series = series

    def _of(self, run_ids: Sequence[str], name: str) -> dict[str, Points]:
        found = {run_id: self.series.get(run_id, {}).get(name) for run_id in run_ids}
        return {run_id: points for run_id, points in found.items() if points and points[0]}

    def extremes(self, run_ids: list[str], metric: str) -> dict[str, tuple[float, float, float]]:
        return {
            run_id: (values[-1], min(values), max(values))
            for run_id, (_, _, values) in self._of(run_ids, metric).items()
        }

    def step_times(self, run_ids: list[str]) -> dict[str, float]:
        return {
            run_id: statistics.median(values)
            for run_id, (_, _, values) in self._of(run_ids, "step_time").items()
        }

    def around_crossing(
        self, run_ids: list[str], metric: str, target: float, higher: bool
    ) -> dict[str, Points]:
        return self._of(run_ids, metric)

    def examples_at(self, steps: dict[str, list[int]]) -> dict[str, dict[int, float]]:
        seen = self._of(list(steps), "examples_seen")
        return {
            run_id: dict(zip(points[0], points[2], strict=True)) for run_id, points in seen.items()
        }
