"""Tracking: the write endpoints that the `kfac_lab` client uses to report a script's run.

All need the admin token. Every write is idempotent (a create is keyed by the client's run
id, points by (run, metric, step), snapshots by (run, step), an ended run keeps its outcome),
so the client may retry anything. The store logs each change as an event, so open pages follow
tracked runs live exactly like worker runs. Every write is also a sign of life of the script
(`/heartbeat` when it has nothing else to send); a run not heard from for
`KFAC_TRACKING_TIMEOUT_S` is failed, and a run that has ended answers further records 409.
See backend/store/tracking.py.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException, Path, Request

from backend.api.deps import AdminDep, SessionDep, SettingsDep, base_url
from backend.api.errors import WRITE_ERRORS, documented
from backend.api.schemas import RunOut, experiment_url
from backend.api.tracking_schemas import (
    MAX_SNAPSHOT_BODY_BYTES,
    Contact,
    EndRun,
    LogBatch,
    MetricBatch,
    MetricsStored,
    SnapshotIn,
    StartRun,
    TrackedRunOut,
)
from backend.store import tracking
from backend.store.run_logs import write_log_lines
from backend.store.writes import RunNotFound

router = APIRouter(
    prefix="/tracking/runs", tags=["tracking"], responses=WRITE_ERRORS | documented(409)
)

RunId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]
# A missing run is a 404; the others are 409: the run is a worker's, or it has ended.
REFUSED = (RunNotFound, tracking.NotTracked, tracking.RunEnded)


def _refused(error: Exception) -> HTTPException:
    if isinstance(error, RunNotFound):
        return HTTPException(404, "No such run.")
    if isinstance(error, tracking.NotTracked):
        return HTTPException(409, "That run is trained by a worker; only tracked runs take writes.")
    # A RunEnded, or a create naming a run of another experiment: the message says which.
    return HTTPException(409, str(error))


@router.post("", status_code=201)
def start(
    body: Annotated[StartRun, Body()],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: AdminDep,
) -> TrackedRunOut:
    """Create a running run in the experiment named `experiment` (created if needed); a retry
    with the same `id` returns the run it created."""
    try:
        run, created = tracking.start_run(
            session,
            run_id=body.id,
            experiment=body.experiment,
            label=body.label,
            config=body.config,
            optimizer=body.optimizer(),
            seed=body.seed,
            client=body.client,
            total_steps=body.total_steps,
            provenance=body.provenance,
        )
    except (tracking.NotTracked, ValueError) as error:
        raise _refused(error) from None
    session.commit()
    return TrackedRunOut(
        run_id=run.id,
        experiment_id=run.experiment_id,
        status=run.status,
        created=created,
        url=experiment_url(base_url(request), run.experiment_id),
        contact_timeout_s=settings.tracking_timeout_s,
    )


@router.post("/{run_id}/heartbeat")
def heartbeat(run_id: RunId, session: SessionDep, _: AdminDep) -> Contact:
    """The script is alive (its client sends this when it has had nothing else to send for a
    while); 409 once the run has ended, e.g. failed after `contact_timeout_s` of silence."""
    try:
        cancel = tracking.contact(session, run_id)
    except REFUSED as error:
        raise _refused(error) from None
    session.commit()
    return Contact(cancel_requested=cancel)


@router.post("/{run_id}/metrics")
def metrics(
    run_id: RunId, body: Annotated[MetricBatch, Body()], session: SessionDep, _: AdminDep
) -> MetricsStored:
    """Append a batch of metric points."""
    try:
        stored, cancel = tracking.record_metrics(session, run_id, body.points)
    except REFUSED as error:
        raise _refused(error) from None
    session.commit()
    return MetricsStored(stored=stored, cancel_requested=cancel)


@router.post("/{run_id}/logs")
def logs(
    run_id: RunId, body: Annotated[LogBatch, Body()], session: SessionDep, _: AdminDep
) -> dict[str, int]:
    """Append log lines (`run.log_text(line)` in the client); returns how many were new."""
    try:
        tracking.contact(session, run_id)
        stored = write_log_lines(session, run_id, body.lines)
    except REFUSED as error:
        raise _refused(error) from None
    session.commit()
    return {"stored": stored}


@router.post("/{run_id}/snapshots", max_body_size=MAX_SNAPSHOT_BODY_BYTES)
def snapshot(
    run_id: RunId, body: Annotated[SnapshotIn, Body()], session: SessionDep, _: AdminDep
) -> dict[str, int]:
    """Add a curvature snapshot at `step` (a second one at the same step is ignored)."""
    try:
        snapshot_id = tracking.record_snapshot(
            session,
            run_id,
            body.step,
            matrices={name: matrix.array() for name, matrix in body.matrices.items()},
            blocks=body.blocks,
            spectra=body.spectra,
            relative_errors=body.relative_errors,
            block_averages=body.block_averages,
            extras=body.extras,
            original_shapes={name: m.original_shape for name, m in body.matrices.items()},
        )
    except REFUSED as error:
        raise _refused(error) from None
    session.commit()
    return {"id": snapshot_id}


@router.post("/{run_id}/end")
def end(run_id: RunId, body: Annotated[EndRun, Body()], session: SessionDep, _: AdminDep) -> RunOut:
    """End the run `succeeded`, or `failed` / `diverged` / `cancelled` with the reason in
    `error`; an ended run keeps the outcome it has."""
    try:
        run = tracking.end_run(
            session,
            run_id,
            body.status,
            error=body.error,
            step=body.step,
            final_metrics=body.final_metrics,
        )
    except REFUSED as error:
        raise _refused(error) from None
    session.commit()
    return RunOut.from_run(run)
