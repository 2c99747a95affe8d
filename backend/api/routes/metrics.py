"""Metrics: one run's series, all runs' series in one request, aggregates over seeds, and the
raw export of a run.

Series are downsampled in the store (min/max-preserving, cost independent of the series'
length) and serialised straight to JSON by pydantic-core, skipping response-model validation
(10 runs x 4 metrics x 2,000 points is one request of the experiment page). Answers are
cached until the experiment's next event and carry an ETag (see `backend.api.cache`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from backend.api.aggregate import aggregate
from backend.api.cache import cached_json
from backend.api.data_schemas import Aggregate, ExperimentMetrics, RunMetrics
from backend.api.deps import (
    MaxPoints,
    MetricNamesDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    XBound,
    load_experiment,
    load_run,
)
from backend.api.errors import READ_ERRORS
from backend.store.db import session_scope
from backend.store.models import Run
from backend.store.queries import iter_points, last_event_id, metric_names, read_metrics

router = APIRouter(tags=["metrics"], responses=READ_ERRORS)

Axis = Annotated[Literal["step", "time"], Query(description="x as the step or wall-clock s")]
EXPORT_CHUNK_ROWS = 5000
_FAR = 1e12  # an open end of an x range


@dataclass(frozen=True)
class SeriesQuery:
    """What a metrics request reads of each run: the metrics `names` (None: every one the runs
    recorded), on the `x` axis, at most `max_points` per series, within `x_range`."""

    names: list[str] | None
    x: str
    max_points: int
    x_range: tuple[float, float] | None

    def read(self, session: Session, runs: list[Run]) -> dict[str, dict]:
        """{run id: {name: series}}."""
        wanted = self.names or sorted(
            {metric["name"] for run in runs for metric in metric_names(session, run.id)}
        )
        ids = [run.id for run in runs]
        return read_metrics(session, ids, wanted, self.x, self.max_points, self.x_range)

    def key(self) -> tuple:
        """What the answer depends on besides the runs and the data's version (a cache key)."""
        return (tuple(self.names or ()), self.x, self.max_points, self.x_range)


def series_query(
    names: MetricNamesDep,
    x: Axis = "step",
    max_points: MaxPoints = 2000,
    x_min: XBound = None,
    x_max: XBound = None,
) -> SeriesQuery:
    """The query parameters of a metrics request; `x_min` / `x_max` zoom in (on the x axis)."""
    x_range = None
    if x_min is not None or x_max is not None:
        x_range = (-_FAR if x_min is None else x_min, _FAR if x_max is None else x_max)
    return SeriesQuery(names, x, max_points, x_range)


SeriesQueryDep = Annotated[SeriesQuery, Depends(series_query)]


@router.get("/runs/{run_id}/metrics", response_model=RunMetrics)
def run_metrics(
    run_id: Annotated[str, Path(max_length=64)],
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    query: SeriesQueryDep,
) -> Response:
    """A run's metrics (`train_loss`, `test_loss`, ...), each at most `max_points` long;
    `x_min` / `x_max` zoom in (on the chosen x axis)."""
    run = load_run(session, principal, run_id)
    version = last_event_id(session, run.experiment_id)

    def make() -> dict:
        return {"run_id": run.id, "series": query.read(session, [run]).get(run.id, {})}

    return cached_json(request, ("run", run.id, *query.key(), version), make)


@router.get("/experiments/{experiment_id}/metrics", response_model=ExperimentMetrics)
def experiment_metrics(
    experiment_id: Annotated[str, Path(max_length=64)],
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    query: SeriesQueryDep,
    run_ids: Annotated[
        list[str] | None, Query(max_length=64, description="Default: every run")
    ] = None,
) -> Response:
    """The metrics of all (or some) runs of an experiment in one request: what the
    experiment page draws. `last_event_id` is read before the data, so the event stream
    opened from it misses nothing (it may repeat a few points this answer already has)."""
    experiment = load_experiment(session, principal, experiment_id)
    cursor = last_event_id(session, experiment.id)
    runs = [run for run in experiment.runs if not run_ids or run.id in run_ids]

    def make() -> dict:
        data = query.read(session, runs)
        return {
            "experiment_id": experiment.id,
            "last_event_id": cursor,
            "runs": [{"run_id": run.id, "series": data.get(run.id, {})} for run in runs],
        }

    key = ("experiment", experiment.id, tuple(run.id for run in runs), *query.key(), cursor)
    return cached_json(request, key, make)


@router.get("/experiments/{experiment_id}/aggregate", response_model=Aggregate)
def aggregate_over_seeds(
    experiment_id: Annotated[str, Path(max_length=64)],
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    name: Annotated[str, Query(max_length=64, pattern=r"^[^\x00]*$")] = "train_loss",
    max_points: MaxPoints = 2000,
) -> Response:
    """One metric averaged over seeds: for each group of runs that differ only in the seed,
    the mean, std, min and max at each step (aligned on the step)."""
    experiment = load_experiment(session, principal, experiment_id)
    runs = experiment.runs

    def make() -> dict:
        data = read_metrics(session, [run.id for run in runs], [name], "step", max_points)
        curves = {run_id: series[name] for run_id, series in data.items() if name in series}
        groups = aggregate(runs, curves, max_points)
        return {"experiment_id": experiment.id, "name": name, "groups": groups}

    version = last_event_id(session, experiment.id)
    return cached_json(request, ("aggregate", experiment.id, name, max_points, version), make)


@router.get(
    "/runs/{run_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Every point of the run: CSV `name,step,wall_time,value`, or JSON "
            '`{"run_id", "columns", "points": [[name, step, wall_time, value], ...]}`',
            "content": {"text/csv": {}, "application/json": {}},
        }
    },
)
def export_run(
    run_id: Annotated[str, Path(max_length=64)],
    session: SessionDep,
    settings: SettingsDep,
    principal: ReaderDep,
    names: MetricNamesDep,
    format: Literal["csv", "json"] = "csv",
) -> StreamingResponse:
    """All of a run's points, not downsampled, streamed from the database in batches."""
    run = load_run(session, principal, run_id)
    rows = _export_rows(settings.database_url, run.id, names)
    if format == "csv":
        body, media_type = _csv(rows), "text/csv"
    else:
        body, media_type = _json(run.id, rows), "application/json"
    filename = f"run-{run.id}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(body, media_type=media_type, headers=headers)


def _export_rows(url: str, run_id: str, names: list[str] | None) -> Iterator[list[tuple]]:
    """The run's points in chunks, read in a session of the stream's own (the request's
    session is closed before the answer starts)."""
    with session_scope(url) as session:
        chunk: list[tuple] = []
        for point in iter_points(session, run_id, names):
            chunk.append(point)
            if len(chunk) == EXPORT_CHUNK_ROWS:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def _csv(chunks: Iterator[list[tuple]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["name", "step", "wall_time", "value"])
    for chunk in chunks:
        writer.writerows(chunk)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _json(run_id: str, chunks: Iterator[list[tuple]]) -> Iterator[str]:
    head = {"run_id": run_id, "columns": ["name", "step", "wall_time", "value"]}
    yield json.dumps(head)[:-1] + ', "points": ['
    separator = ""
    for chunk in chunks:
        yield separator + ",".join(json.dumps(list(point)) for point in chunk)
        separator = ","
    yield "]}"
