"""The comparison of an experiment's optimizer configurations, or of several experiments'
(`backend.comparison` computes it; answers are cached until the next event), as JSON or as the
CSV table that exports it (one row per group)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from backend.api.cache import cached_json
from backend.api.data_schemas import Comparison
from backend.api.deps import AdminDep, ReaderDep, SessionDep, load_experiment
from backend.api.errors import READ_ERRORS
from backend.comparison import comparison, group_runs
from backend.comparison_sources import StoreSource
from backend.store.queries import last_event_id

router = APIRouter(tags=["comparison"], responses=READ_ERRORS)

MAX_EXPERIMENTS = 20
Metric = Annotated[
    str, Query(max_length=64, pattern=r"^[^\x00]+$", description="e.g. train_loss, test_loss")
]
Target = Annotated[
    float | None,
    Query(allow_inf_nan=False, description="Default: the best final mean of the baselines"),
]
CriterionQuery = Annotated[
    Literal["final", "best"], Query(description="What picks each optimizer's best configuration")
]
Format = Annotated[Literal["json", "csv"], Query(description="csv: the table, one row a group")]
ANSWERS = {
    200: {
        "description": "The comparison (JSON), or its table as CSV",
        "content": {"text/csv": {}},
    }
}
STATISTICS = ("final", "best", "steps_to_target", "seconds_to_target", "examples_to_target")
COLUMNS = ("mean", "sd", "ci95", "n")


@router.get("/experiments/{experiment_id}/comparison", response_model=Comparison, responses=ANSWERS)
def experiment(
    experiment_id: Annotated[str, Path(max_length=64)],
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    metric: Metric = "train_loss",
    target: Target = None,
    criterion: CriterionQuery = "final",
    format: Format = "json",
) -> Response:
    """One row per optimizer configuration (runs that differ only by seed): final and best
    value, steps / seconds / examples to the target, median step time, each optimizer's
    winner; labels and colours for every view of the experiment."""
    version = last_event_id(session, experiment_id)  # before the runs and their metrics
    found = load_experiment(session, principal, experiment_id)

    def make() -> dict:
        groups = group_runs(found.runs)
        answer = comparison(StoreSource(session), groups, metric, criterion, target)
        return {**answer, "last_event_id": version}

    key = ("comparison", found.id, metric, target, criterion, version)
    return _answer(request, key, make, format, found.name)


@router.get("/comparison", response_model=Comparison, responses=ANSWERS)
def experiments(
    request: Request,
    session: SessionDep,
    principal: AdminDep,  # a dependency: refused (403) before the query is validated
    ids: Annotated[
        str | None,
        Query(
            max_length=MAX_EXPERIMENTS * 65,
            pattern=r"^[^,\x00]+(,[^,\x00]+)*$",
            description=f"Comma-separated experiment ids (at most {MAX_EXPERIMENTS}); "
            "none: a comparison of no groups",
        ),
    ] = None,
    metric: Metric = "train_loss",
    target: Target = None,
    criterion: CriterionQuery = "final",
    format: Format = "json",
) -> Response:
    """Several experiments side by side: their groups, each label starting with the
    experiment's name, colours decided over all of them (admin only: a share link opens one
    experiment)."""
    wanted = list(dict.fromkeys(ids.split(","))) if ids else []
    if len(wanted) > MAX_EXPERIMENTS:
        raise HTTPException(422, f"ids: at most {MAX_EXPERIMENTS} experiments")
    found = [load_experiment(session, principal, experiment_id) for experiment_id in wanted]
    version = tuple(last_event_id(session, e.id) for e in found)

    def make() -> dict:
        runs = [run for e in found for run in e.runs]
        groups = group_runs(runs, experiment_names={e.id: e.name for e in found})
        answer = comparison(StoreSource(session), groups, metric, criterion, target)
        return {**answer, "last_event_id": None}  # several experiments: no one stream

    key = ("comparison", tuple(e.id for e in found), metric, target, criterion, version)
    return _answer(request, key, make, format, "comparison")


def _answer(
    request: Request, key: tuple, make: Callable[[], dict], format: str, name: str
) -> Response:
    if format == "json":
        return cached_json(request, key, make)
    filename = "".join(c if c.isalnum() or c in "-_." else "_" for c in name) + "-comparison.csv"
    return Response(
        table_csv(make()),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def table_csv(answer: dict[str, Any]) -> str:
    """The comparison as a table: one row per group, each statistic in four columns."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    head = ["metric", "target", "criterion", "experiment_id", "group", "optimizer", "config"]
    head += ["colour", "seeds", "finished"]
    head += [f"{stat}_{column}" for stat in STATISTICS for column in COLUMNS]
    head += ["never_reached", "step_time_ms", "best_of_optimizer"]
    writer.writerow(head)
    for group in answer["groups"]:
        row = [answer["metric"], answer["target"], answer["criterion"], group["experiment_id"]]
        row += [group["label"], group["optimizer"], json.dumps(group["config"]), group["colour"]]
        row += [group["seeds"]["count"], group["seeds"]["finished"]]
        row += [group[stat][column] for stat in STATISTICS for column in COLUMNS]
        row += [group["steps_to_target"]["never"], group["step_time_ms"]]
        row += [group["best_of_optimizer"]]
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()
