"""The API's routers: `api_router` (everything under `/api`) and `health_router`."""

from fastapi import APIRouter, Depends

from backend.api.deps import known_query, known_query_after_auth
from backend.api.errors import UNKNOWN_QUERY_ERROR
from backend.api.routes import (
    comparison,
    datasets,
    events,
    experiments,
    logs,
    metrics,
    presets,
    report,
    runs,
    share,
    snapshots,
    tracking,
)
from backend.api.routes.health import router as health

# Every route refuses query parameters it does not declare (see backend.api.deps).
api_router = APIRouter(
    prefix="/api", dependencies=[Depends(known_query_after_auth)], responses=UNKNOWN_QUERY_ERROR
)
for module in (
    experiments,
    comparison,
    runs,
    metrics,
    logs,
    snapshots,
    events,
    share,
    presets,
    datasets,
    report,
    tracking,
):
    api_router.include_router(module.router)
health_router = APIRouter(dependencies=[Depends(known_query)], responses=UNKNOWN_QUERY_ERROR)
health_router.include_router(health)

__all__ = ["api_router", "health_router"]
