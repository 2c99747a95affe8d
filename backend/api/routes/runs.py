"""Runs: get one, cancel one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Path

from backend.api.deps import AdminDep, ReaderDep, SessionDep, SettingsDep, load_run
from backend.api.errors import READ_ERRORS, WRITE_ERRORS
from backend.api.schemas import RunDetail, RunOut
from backend.api.service import cancel_one, consumed_queues, revoke_tasks
from backend.store.queries import get_run, metric_names

router = APIRouter(prefix="/runs", tags=["runs"], responses=READ_ERRORS)

RunId = Annotated[str, Path(max_length=64)]


@router.get("/{run_id}")
def get_one(
    run_id: RunId, session: SessionDep, settings: SettingsDep, principal: ReaderDep
) -> RunDetail:
    """The run with its full spec and the metrics it has recorded."""
    run = load_run(session, principal, run_id)
    live = consumed_queues(session, settings)
    return RunDetail.from_run(run, live, spec=run.spec, metrics=metric_names(session, run.id))


@router.post("/{run_id}/cancel", responses=WRITE_ERRORS)
def cancel(
    run_id: RunId,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminDep,
    background: BackgroundTasks,
) -> RunOut:
    """Cancel the run: a queued one at once, a running one within a few steps (its status
    stays `running` until its worker stops it). A finished run is left as it is."""
    run = load_run(session, principal, run_id)
    background.add_task(revoke_tasks, cancel_one(session, run))
    session.expire_all()
    return RunOut.from_run(get_run(session, run_id), consumed_queues(session, settings))
