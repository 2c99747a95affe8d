"""The FastAPI application: `create_app(settings)` and the module-level `app` uvicorn serves.

    uvicorn backend.api.main:app          # settings from KFAC_* variables / .env

Building the app touches neither the database nor the broker (engines connect on first use),
so importing this module is quick and works with both of them down; `/readyz` says when they
are back. The layout follows FastAPI's full-stack template: thin routers under `routes/`,
one session dependency and the auth dependencies in `deps.py`, response models in
`schemas.py`, the work that is more than a read in `service.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from backend.api import errors, security
from backend.api.cache import VersionedCache
from backend.api.deps import MAX_BODY_BYTES
from backend.api.frontend import FRONTEND_DIR, mount_frontend
from backend.api.live import EventHub
from backend.api.routes import api_router, health_router
from backend.settings import Settings, get_settings

# Answers of at least this size go gzip-compressed to clients that accept it: JSON curves and
# snapshot matrices as decimal text about 2x, the pages' modules 2-3x. Level 1: on a snapshot's
# JSON it is within 10% of level 9's size for a fifth (vs level 5) to a fifteenth of the CPU.
# Event streams and what is compressed already (plotly.js) pass untouched.
GZIP_MINIMUM_BYTES = 1024
GZIP_LEVEL = 1

DESCRIPTION = """\
Launch K-FAC / KFC comparisons, read their metrics and curvature snapshots, follow them live.

Send `Authorization: Bearer TOKEN` with every request: the admin token (printed by
`kfac-lab serve`, or `KFAC_ADMIN_TOKEN`) reads and writes everything; a share token (from
`POST /api/experiments/{id}/share`) reads one experiment.
"""


def create_app(settings: Settings | None = None, *, frontend_dir: Path | None = None) -> FastAPI:
    """The app for `settings` (default: the process's, from the environment)."""
    settings = settings or get_settings()
    hub = EventHub(settings.database_url, settings.max_streams_per_client)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await hub.close()  # ends open event streams

    app = FastAPI(
        title="kfac-lab",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
        docs_url=None,  # served below, with a policy for their inline script
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.event_hub = hub
    app.state.admin_token = None  # read on first use (see deps.admin_token)
    app.state.response_cache = VersionedCache()

    errors.install(app)
    security.install(app)
    app.add_middleware(GZipMiddleware, minimum_size=GZIP_MINIMUM_BYTES, compresslevel=GZIP_LEVEL)
    if settings.cors_origins:  # closed unless origins are configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.include_router(api_router)
    app.include_router(health_router)
    mount_frontend(app, frontend_dir or FRONTEND_DIR)
    _mount_docs(app)
    return app


def _mount_docs(app: FastAPI) -> None:
    """FastAPI's Swagger UI and ReDoc pages, each with the CSP that lets its own inline script
    and its CDN bundle run (the default policy allows neither)."""

    def with_policy(page: HTMLResponse) -> HTMLResponse:
        page.headers["Content-Security-Policy"] = security.html_policy(page.body.decode())
        return page

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return with_policy(get_swagger_ui_html(openapi_url="/openapi.json", title=app.title))

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return with_policy(get_redoc_html(openapi_url="/openapi.json", title=app.title))


app = create_app()
