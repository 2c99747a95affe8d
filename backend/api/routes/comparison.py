"""The comparison of an experiment's optimizer configurations, or of several experiments'
(`backend.comparison` computes it; answers are cached until the next event)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response

from backend.api.cache import cached_json
from backend.api.deps import ReaderDep, SessionDep, load_experiment
from backend.api.errors import READ_ERRORS
from backend.api.schemas import Comparison
from backend.comparison import experiment_comparison, group_runs
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


@router.get("/experiments/{experiment_id}/comparison", response_model=Comparison)
def experiment(
    experiment_id: Annotated[str, Path(max_length=64)],
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    metric: Metric = "train_loss",
    target: Target = None,
    criterion: CriterionQuery = "final",
) -> Response:
    """One row per optimizer configuration (runs that differ only by seed): final and best
    value, steps / seconds / examples to the target, median step time, each optimizer's
    winner; labels and colours for every view of the experiment."""
    found = load_experiment(session, principal, experiment_id)
    version = last_event_id(session, found.id)

    def make() -> dict:
        return experiment_comparison(session, group_runs(found.runs), metric, criterion, target)

    return cached_json(request, ("comparison", found.id, metric, target, criterion, version), make)


@router.get("/comparison", response_model=Comparison)
def experiments(
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    ids: Annotated[
        str,
        Query(
            max_length=MAX_EXPERIMENTS * 65,
            pattern=r"^[^,\x00]+(,[^,\x00]+)*$",
            description=f"Comma-separated experiment ids (at most {MAX_EXPERIMENTS})",
        ),
    ],
    metric: Metric = "train_loss",
    target: Target = None,
    criterion: CriterionQuery = "final",
) -> Response:
    """Several experiments side by side: their groups, each label starting with the
    experiment's name, colours decided over all of them (admin only: a share link opens one
    experiment)."""
    if not principal.admin:
        raise HTTPException(403, "A share link opens one experiment only.")
    wanted = list(dict.fromkeys(ids.split(",")))
    if len(wanted) > MAX_EXPERIMENTS:
        raise HTTPException(422, f"ids: at most {MAX_EXPERIMENTS} experiments")
    found = [load_experiment(session, principal, experiment_id) for experiment_id in wanted]
    version = tuple(last_event_id(session, e.id) for e in found)

    def make() -> dict:
        runs = [run for e in found for run in e.runs]
        groups = group_runs(runs, experiment_names={e.id: e.name for e in found})
        return experiment_comparison(session, groups, metric, criterion, target)

    key = ("comparison", tuple(e.id for e in found), metric, target, criterion, version)
    return cached_json(request, key, make)
