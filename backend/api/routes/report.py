"""The experiment's self-contained HTML report (opens offline; plotly.js is embedded)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse

from backend.api.deps import ReaderDep, SessionDep, load_experiment
from backend.api.errors import READ_ERRORS
from backend.api.report import experiment_report
from backend.api.security import html_policy

router = APIRouter(tags=["experiments"], responses=READ_ERRORS)


@router.get("/experiments/{experiment_id}/report", response_class=HTMLResponse)
def report(
    experiment_id: Annotated[str, Path(max_length=64)], session: SessionDep, principal: ReaderDep
) -> HTMLResponse:
    """Loss curves, the latest curvature heatmaps of every run and the runs table, as one HTML
    file with plotly.js inside, downloaded as `kfac-lab-<id>.html`."""
    experiment = load_experiment(session, principal, experiment_id)
    filename = f"kfac-lab-{experiment.id}.html"
    document = experiment_report(session, experiment)
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Content-Security-Policy": html_policy(document),  # its inline scripts, by hash
    }
    return HTMLResponse(document, headers=headers)
