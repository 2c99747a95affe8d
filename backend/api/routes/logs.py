"""Run logs: a run's log lines, which the page's panel tails. They are stored by
backend/store/run_logs.py: a worker writes its runs' lines itself, a tracking script sends
its own (POST /api/tracking/runs/{id}/logs, backend/api/routes/tracking.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from backend.api.deps import ReaderDep, SessionDep, load_run
from backend.api.errors import READ_ERRORS
from backend.store.run_logs import MAX_LOG_LINES, read_log_lines
from backend.tracking_protocol import MAX_STEP

router = APIRouter(tags=["logs"], responses=READ_ERRORS)


class LogLine(BaseModel):
    seq: int = Field(description="The line's number in its run, from 0")
    time: str = Field(description="ISO 8601, UTC")
    level: str
    message: str


class RunLogs(BaseModel):
    run_id: str
    lines: list[LogLine] = Field(description=f"Oldest first; a run keeps its last {MAX_LOG_LINES}")


@router.get("/runs/{run_id}/logs")
def run_logs(
    run_id: Annotated[str, Path(max_length=64)],
    session: SessionDep,
    principal: ReaderDep,
    after: Annotated[int, Query(ge=-1, le=MAX_STEP, description="Only lines after this seq")] = -1,
) -> RunLogs:
    """The run's log lines after `after` (its worker's log and a failure's traceback, or the
    lines its tracking script sent); the page polls with the last seq it has, or follows the
    experiment's event stream (`logs` events carry the same lines)."""
    run = load_run(session, principal, run_id)
    return RunLogs(run_id=run.id, lines=read_log_lines(session, run.id, after))
