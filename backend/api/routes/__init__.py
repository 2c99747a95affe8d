"""The API's routers: `api_router` (everything under `/api`) and `health_router`."""

from fastapi import APIRouter

from backend.api.routes import (
    comparison,
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
from backend.api.routes.health import router as health_router

api_router = APIRouter(prefix="/api")
for module in (
    experiments, comparison, runs, metrics, logs, snapshots, events, share, presets, report,
    tracking,
):
    api_router.include_router(module.router)

__all__ = ["api_router", "health_router"]
