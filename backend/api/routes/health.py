"""Health: `/healthz` says the process answers; `/readyz` that it can do its job.

`/readyz` checks the database (a `SELECT 1`) and the broker (opening a connection) at the same
time, each bounded by a short timeout, so an orchestrator's probe gets an answer within
`READY_TIMEOUT_S` even when a dependency hangs rather than refuses.
"""

from __future__ import annotations

import anyio
from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from backend.api.deps import get_settings
from backend.api.schemas import Health, Readiness
from backend.api.service import task_queue
from backend.store.db import get_engine

router = APIRouter(tags=["health"])

READY_TIMEOUT_S = 2.5


@router.get("/healthz")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(request: Request) -> JSONResponse:
    """Both checks use the app's settings (`create_app(settings)`), not the process's."""
    settings = get_settings(request)
    checks: dict[str, str] = {}

    def database() -> bool:
        with get_engine(settings.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        return True

    def broker() -> bool:
        return task_queue().broker_reachable(timeout=READY_TIMEOUT_S - 0.5, settings=settings)

    async def check(name: str, probe) -> None:
        try:
            with anyio.fail_after(READY_TIMEOUT_S):
                ok = await to_thread.run_sync(probe, abandon_on_cancel=True)
            checks[name] = "ok" if ok else "unreachable"
        except TimeoutError:
            checks[name] = "timed out"
        except Exception as error:  # noqa: BLE001 - any failure means "not ready"
            checks[name] = f"unreachable ({error.__class__.__name__})"

    async with anyio.create_task_group() as group:
        group.start_soon(check, "database", database)
        group.start_soon(check, "broker", broker)
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ok" if ready else "unavailable", checks=dict(sorted(checks.items())))
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
