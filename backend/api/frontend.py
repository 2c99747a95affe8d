"""Serving the frontend from the API's own origin: the pages, their static files, and plotly.js.

* Pages have hash-free URLs — `/`, `/new`, `/experiments/{id}`, `/compare?ids=A,B` — each
  served from `frontend/<page>.html` when that file exists, else from `frontend/index.html`
  (the SPA shell, which routes by `location.pathname`). The start-up URL's `?token=` and a
  share link's `#share=` are read by the page's script, not by the server (see
  frontend/js/api.js). A page goes out as `backend.api.pages` assembles it: its module graph
  preloaded, its files named at `/assets/VERSION/...`; it says `Cache-Control: no-cache` and
  carries an ETag, so the browser revalidates it with one cheap 304 round trip.
* `/assets/VERSION/...` serves `frontend/`'s files for good (`immutable`, a year) when VERSION
  is the current one: a second visit downloads nothing but the page. `/static/...` serves the
  same files revalidated (`no-cache`), for anything that names them directly.
* plotly.js is `frontend/vendor/plotly-cartesian.min.js` (the cartesian bundle, a third of the
  full one's size: see frontend/vendor/README.md). It is sent gzip-compressed (0.5 MB) to
  browsers that accept it, compressed once per process: in a background thread as the app is
  built, so that the first visitor does not wait for it. It is served with V8's compile hint
  `//# allFunctionsCalledOnLoad` in front: running the bundle calls many of its functions at
  once, and with the hint Chromium compiles them on a background thread while the file
  downloads instead of one by one on the main thread as they are first called. (Measured on
  the full bundle: headless Chromium on 2 overloaded cores, first visits of the experiment
  page interleaved with and without the hint, median of 8: curves drawn after 2.1 s instead of
  4.0 s.) Other browsers read a comment.
* Everything else (pages, modules, CSS, JSON) is compressed on the way out by the app's
  GZipMiddleware (see `backend.api.main`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from backend.api.pages import ASSETS_PREFIX, STATIC_PREFIX, assemble_page, frontend_version

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"
PLOTLY_BUNDLE = "vendor/plotly-cartesian.min.js"
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
COMPILE_HINT = b"//# allFunctionsCalledOnLoad\n"


class RevalidatedStaticFiles(StaticFiles):
    """StaticFiles (ETag, Last-Modified, 304) that also tells browsers to revalidate."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = REVALIDATE
        return response


class VersionedStaticFiles(StaticFiles):
    """`VERSION/PATH` → the file PATH; kept for good when VERSION is the frontend's current
    version, revalidated otherwise (an old page's URL still works, but is not pinned)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        version, _, rest = path.partition("/")
        response = await super().get_response(rest, scope)
        if response.status_code in (200, 304):
            current = version == frontend_version(Path(self.directory))
            response.headers["Cache-Control"] = IMMUTABLE if current else REVALIDATE
        return response


def file_response(request: Request, path: Path, cache_control: str) -> Response:
    """`path` with an ETag and `cache_control`; 304 when the browser's copy is current."""
    stat = path.stat()
    headers = {"ETag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"', "Cache-Control": cache_control}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, headers=headers, stat_result=os.stat(path))


def page_response(request: Request, frontend_dir: Path, page: Path) -> Response:
    """A page as `backend.api.pages` assembles it, revalidated by an ETag of that body."""
    body = assemble_page(frontend_dir, page)
    headers = {"ETag": f'"{_body_tag(body)}"', "Cache-Control": REVALIDATE}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, headers=headers, media_type="text/html")


def plotly_response(request: Request, path: Path, cache_control: str) -> Response:
    """The plotly bundle with the compile hint, gzip-compressed if the browser accepts it."""
    stat = path.stat()
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    version = f"{stat.st_mtime_ns:x}-{stat.st_size:x}-hinted{'-gz' if gzipped else ''}"
    headers = {"ETag": f'"{version}"', "Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    body = _plotly_body(str(path), stat.st_mtime_ns, gzipped)
    return Response(body, headers=headers, media_type="text/javascript")


@lru_cache(maxsize=64)
def _body_tag(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


@lru_cache(maxsize=4)
def _plotly_body(path: str, mtime_ns: int, gzipped: bool) -> bytes:
    body = COMPILE_HINT + Path(path).read_bytes()
    return gzip.compress(body, compresslevel=6) if gzipped else body


def mount_frontend(app: FastAPI, frontend_dir: Path = FRONTEND_DIR) -> None:
    """Add the page routes, plotly.js's, `/assets/` and `/static/` to `app`."""
    plotly_bundle = frontend_dir / PLOTLY_BUNDLE

    def page(request: Request, name: str) -> Response:
        for candidate in (frontend_dir / f"{name}.html", frontend_dir / "index.html"):
            if candidate.is_file():
                return page_response(request, frontend_dir, candidate)
        raise HTTPException(404, "The frontend is not installed (no frontend/index.html).")

    @app.get("/", include_in_schema=False)
    def index_page(request: Request) -> Response:
        return page(request, "index")

    @app.get("/new", include_in_schema=False)
    def new_page(request: Request) -> Response:
        return page(request, "new")

    @app.get("/compare", include_in_schema=False)
    def compare_page(request: Request) -> Response:
        return page(request, "compare")

    @app.get("/experiments/{experiment_id}", include_in_schema=False)
    def experiment_page(request: Request, experiment_id: str) -> Response:
        return page(request, "experiment")

    def plotly(request: Request, cache_control: str) -> Response:
        if not plotly_bundle.is_file():
            raise HTTPException(404, f"plotly.js is not installed (no frontend/{PLOTLY_BUNDLE}).")
        return plotly_response(request, plotly_bundle, cache_control)

    @app.get(f"{STATIC_PREFIX}{PLOTLY_BUNDLE}", include_in_schema=False)
    def plotly_revalidated(request: Request) -> Response:
        return plotly(request, REVALIDATE)

    @app.get(ASSETS_PREFIX + "{version}/" + PLOTLY_BUNDLE, include_in_schema=False)
    def plotly_versioned(request: Request, version: str) -> Response:
        current = version == frontend_version(frontend_dir)
        return plotly(request, IMMUTABLE if current else REVALIDATE)

    app.mount(ASSETS_PREFIX, VersionedStaticFiles(directory=frontend_dir, check_dir=False))
    app.mount(STATIC_PREFIX, RevalidatedStaticFiles(directory=frontend_dir, check_dir=False))
    _compress_in_background(plotly_bundle)


def _compress_in_background(path: Path) -> None:
    """Fill `_plotly_body`'s cache for `path` now, off the request path (once per process)."""
    if not path.is_file():
        return
    arguments = (str(path), path.stat().st_mtime_ns, True)
    threading.Thread(target=_plotly_body, args=arguments, daemon=True).start()
