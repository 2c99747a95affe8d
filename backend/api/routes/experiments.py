"""Experiments: create (from a spec or a preset) or only validate, list (search, filter, sort),
get, change (name, notes, tags, archive), delete, clone, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, HTTPException, Path, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.convertors import StringConvertor, register_url_convertor

from backend.api.deps import (
    MAX_PAGE_SIZE,
    AdminDep,
    ReaderDep,
    SessionDep,
    SettingsDep,
    base_url,
    get_settings,
    load_experiment,
)
from backend.api.errors import READ_ERRORS, WRITE_ERRORS, documented
from backend.api.page_schemas import ExperimentPage, ExperimentUpdate, OptimizerName, Tag
from backend.api.preview import ExperimentPreview, preview
from backend.api.schemas import (
    CloneRequest,
    CreateExperiment,
    ExperimentDetail,
    ExperimentOut,
    RunStatusName,
)
from backend.api.service import (
    cancel_all,
    consumed_queues,
    launch,
    refuse_unlaunchable,
    remove,
    resolve_spec,
    revoke_tasks,
    stored_spec,
    with_new_seeds,
)
from backend.store.listing import ArchivedFilter, SortKey, SortOrder, list_experiments
from backend.store.models import Experiment
from backend.store.organise import set_archived, set_notes, set_tags
from backend.store.queries import get_experiment, last_event_id
from backend.store.queueing import queue_positions
from backend.store.writes import rename_experiment

router = APIRouter(prefix="/experiments", tags=["experiments"], responses=READ_ERRORS)

ExperimentId = Annotated[str, Path(max_length=64)]


class _NotValidate(StringConvertor):
    """A path segment other than `validate`. `/api/experiments/validate` is a resource of its
    own (POST only): without this, `/{experiment_id}` matched it too, so a GET there read an
    experiment named "validate" and a 405 advertised GET, PATCH and DELETE."""

    regex = "(?!validate$)[^/]+"


register_url_convertor("experiment", _NotValidate())
ONE = "/{experiment_id:experiment}"


def detail(
    session: Session, request: Request, experiment: Experiment, cursor: int | None = None
) -> ExperimentDetail:
    """The experiment's answer; `cursor`, its newest event id, when the caller read it before
    the runs (else it is read now). Only the read a page opens its live stream from needs the
    order (`get_one`); the writes' answers are for the writer."""
    waiting = any(run.status == "queued" for run in experiment.runs)
    return ExperimentDetail.from_experiment(
        experiment,
        base_url(request),
        consumed_queues(session, get_settings(request)),
        queue_positions(session) if waiting else None,
        spec=experiment.spec,
        notes=experiment.notes,
        last_event_id=last_event_id(session, experiment.id) if cursor is None else cursor,
    )


@router.post("", status_code=201, responses=WRITE_ERRORS)
def create_experiment(
    body: Annotated[CreateExperiment, Body()],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
) -> ExperimentDetail:
    """Store the experiment with its runs `queued` and send one task per run.

    The body is a full experiment spec, or `{"preset": NAME, "name"?, "overrides"?}`.
    """
    spec, preset, at = resolve_spec(body)
    return detail(session, request, launch(session, settings, spec, preset, at))


@router.post("/validate", responses=WRITE_ERRORS)
def validate(
    body: Annotated[CreateExperiment, Body()], settings: SettingsDep, _: AdminDep
) -> ExperimentPreview:
    """Check a create request without launching it: the same 422s as `POST /api/experiments`
    (resource limits included), else each run's network, parameter count and estimate."""
    spec, _preset, at = resolve_spec(body)
    refuse_unlaunchable(settings, spec, at)
    return preview(settings, spec)


NoNul = r"^[^\x00]*$"


@router.get("")
def list_all(
    request: Request,
    session: SessionDep,
    principal: ReaderDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    status: Annotated[list[RunStatusName] | None, Query(description="Any of these")] = None,
    name: Annotated[
        str | None, Query(max_length=200, pattern=NoNul, description="Contains, any case")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=NoNul,
            description="The search box: the name contains it (any case), or it is one of "
            "the experiment's tags or of its runs' optimizers",
        ),
    ] = None,
    tag: Annotated[list[Tag] | None, Query(max_length=20, description="Has all of these")] = None,
    optimizer: Annotated[
        list[OptimizerName] | None,
        Query(max_length=20, description="A run uses any of these optimizers"),
    ] = None,
    archived: Annotated[
        ArchivedFilter, Query(description="Archived experiments: left out, included, or only")
    ] = "exclude",
    sort: Annotated[
        SortKey,
        Query(
            description="created, name, status, preset, tags (the first), runs (how many), "
            "progress, best_loss (the lowest final train_loss); missing values last"
        ),
    ] = "created",
    order: Annotated[SortOrder, Query()] = "desc",
) -> ExperimentPage:
    """A page of experiments and how many match (admin only: a share link opens one
    experiment). Search, filters and sort are done by the database (backend.store.listing)."""
    if not principal.admin:
        raise HTTPException(403, "A share link opens one experiment only.")
    experiments, total = list_experiments(
        session,
        limit=limit,
        offset=offset,
        status=status,
        name=name,
        search=q,
        tags=tag or (),
        optimizers=optimizer or (),
        archived=archived,
        sort=sort,
        order=order,
    )
    url, live = base_url(request), consumed_queues(session, get_settings(request))
    return ExperimentPage(
        items=[ExperimentOut.from_experiment(e, url, live) for e in experiments],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(ONE)
def get_one(
    experiment_id: ExperimentId, request: Request, session: SessionDep, principal: ReaderDep
) -> ExperimentDetail:
    """The experiment with its runs (status, progress, device, final metrics, error)."""
    # The cursor first: a live stream from it misses nothing the runs' statuses lack.
    cursor = last_event_id(session, experiment_id)
    return detail(session, request, load_experiment(session, principal, experiment_id), cursor)


@router.delete(ONE, status_code=204, responses=WRITE_ERRORS)
def delete(
    experiment_id: ExperimentId,
    session: SessionDep,
    principal: AdminDep,
    background: BackgroundTasks,
) -> Response:
    """Stop the experiment's runs, then delete it with its metrics, snapshots and links."""
    experiment = load_experiment(session, principal, experiment_id)
    background.add_task(revoke_tasks, remove(session, experiment))
    return Response(status_code=204)


@router.patch(ONE, responses=WRITE_ERRORS)
def update(
    experiment_id: ExperimentId,
    body: ExperimentUpdate,
    request: Request,
    session: SessionDep,
    principal: AdminDep,
) -> ExperimentDetail:
    """Change what is given of the experiment's name, notes (Markdown), tags and archived
    state; the rest stays."""
    experiment = load_experiment(session, principal, experiment_id)
    given = body.model_fields_set
    if "name" in given:
        rename_experiment(session, experiment.id, body.name)
    if "notes" in given:
        set_notes(session, experiment, body.notes)
    if "tags" in given:
        set_tags(session, experiment, body.tags)
    if "archived" in given:
        set_archived(session, experiment, body.archived)
    session.commit()
    session.expire_all()
    return detail(session, request, get_experiment(session, experiment.id))


@router.post("/{experiment_id}/cancel", responses=WRITE_ERRORS)
def cancel(
    experiment_id: ExperimentId,
    request: Request,
    session: SessionDep,
    principal: AdminDep,
    background: BackgroundTasks,
) -> ExperimentDetail:
    """Cancel every unfinished run: queued ones at once, running ones within a few steps."""
    experiment = load_experiment(session, principal, experiment_id)
    background.add_task(revoke_tasks, cancel_all(session, experiment))
    session.expire_all()
    return detail(session, request, get_experiment(session, experiment_id))


@router.post("/{experiment_id}/clone", status_code=201, responses=WRITE_ERRORS | documented(409))
def clone(
    experiment_id: ExperimentId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    body: Annotated[CloneRequest | None, Body()] = None,
) -> ExperimentDetail:
    """Run it again: the same spec with new seeds (runs that shared a seed share the new one)."""
    experiment = load_experiment(session, principal, experiment_id)
    if experiment.tracking_name is not None:
        raise HTTPException(409, "Its runs were reported by scripts; the lab cannot re-run them.")
    try:
        spec = with_new_seeds(stored_spec(experiment))
    except ValidationError as error:  # stored by an older version with other limits
        raise HTTPException(409, f"The stored spec is no longer valid: {error}") from None
    if body is not None and body.name is not None:
        spec = spec.model_copy(update={"name": body.name})
    return detail(session, request, launch(session, settings, spec, experiment.preset))
