"""Serving the frontend from the API's own origin: the pages, their static files, and plotly.js.

* Pages have hash-free URLs — `/`, `/new`, `/experiments/{id}`, `/compare?ids=A,B` — each
  served from `frontend/<page>.html` when that file exists, else from `frontend/index.html`
  (the SPA shell, which routes by `location.pathname`). The start-up URL's `?token=` and a
  share link's `#share=` are read by the page's script, not by the server (see
  frontend/js/api.js).
* `frontend/` is also served under `/static/` (`/static/js/api.js`, `/static/css/app.css`).
  There is no build step, so file names carry no content hash: these answers say
  `Cache-Control: no-cache` and carry an ETag, i.e. the browser keeps them and revalidates
  with one cheap 304 round trip.
* `/static/vendor/plotly.min.js` is the bundle shipped in the installed `plotly` Python package
  (found without importing it). Its content changes only with the package version, so it is
  cached for a day; being 4.8 MB, it is sent gzip-compressed (1.4 MB) to browsers that accept
  it, compressed once per process: in a background thread as the app is built, so that the
  first visitor does not wait the ~0.2 s of CPU that takes. It is served with V8's compile hint
  `//# allFunctionsCalledOnLoad` in front: running the bundle calls many of its functions at
  once, and with the hint Chromium compiles them on a background thread while the file
  downloads instead of one by one on the main thread as they are first called: that was the
  first visit's dominant cost. (Headless Chromium on 2 overloaded cores, first visits of the
  experiment page interleaved with and without the hint, median of 8: curves drawn after 2.1 s
  instead of 4.0 s.) Other browsers read a comment.
* Everything else (pages, modules, CSS, JSON) is compressed on the way out by the app's
  GZipMiddleware (see `backend.api.main`).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import threading
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

FRONTEND_DIR = Path(__file__).resolve().parents[2] / "frontend"
REVALIDATE = "no-cache"
VENDOR_MAX_AGE = "public, max-age=86400"
COMPILE_HINT = b"//# allFunctionsCalledOnLoad\n"


class RevalidatedStaticFiles(StaticFiles):
    """StaticFiles (ETag, Last-Modified, 304) that also tells browsers to revalidate."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 304):
            response.headers["Cache-Control"] = REVALIDATE
        return response


def plotly_js() -> Path | None:
    """plotly.min.js of the installed `plotly` package, or None if it is not installed."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


def file_response(request: Request, path: Path, cache_control: str) -> Response:
    """`path` with an ETag and `cache_control`; 304 when the browser's copy is current."""
    stat = path.stat()
    headers = {"ETag": f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"', "Cache-Control": cache_control}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return FileResponse(path, headers=headers, stat_result=os.stat(path))


def plotly_response(request: Request, path: Path) -> Response:
    """The plotly bundle with the compile hint, gzip-compressed if the browser accepts it."""
    stat = path.stat()
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    version = f"{stat.st_mtime_ns:x}-{stat.st_size:x}-hinted{'-gz' if gzipped else ''}"
    headers = {"ETag": f'"{version}"', "Cache-Control": VENDOR_MAX_AGE, "Vary": "Accept-Encoding"}
    if headers["ETag"] in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    body = _plotly_body(str(path), stat.st_mtime_ns, gzipped)
    return Response(body, headers=headers, media_type="text/javascript")


@lru_cache(maxsize=4)
def _plotly_body(path: str, mtime_ns: int, gzipped: bool) -> bytes:
    body = COMPILE_HINT + Path(path).read_bytes()
    return gzip.compress(body, compresslevel=6) if gzipped else body


def mount_frontend(app: FastAPI, frontend_dir: Path = FRONTEND_DIR) -> None:
    """Add the page routes, `/static/vendor/plotly.min.js` and `/static/` to `app`."""

    def page(request: Request, name: str) -> Response:
        for candidate in (frontend_dir / f"{name}.html", frontend_dir / "index.html"):
            if candidate.is_file():
                return file_response(request, candidate, REVALIDATE)
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

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_bundle(request: Request) -> Response:
        path = plotly_js()
        if path is None:
            raise HTTPException(404, "The plotly package is not installed.")
        return plotly_response(request, path)

    app.mount("/static", RevalidatedStaticFiles(directory=frontend_dir, check_dir=False))
    _compress_in_background(plotly_js())


def _compress_in_background(path: Path | None) -> None:
    """Fill `_plotly_body`'s cache for `path` now, off the request path (once per process)."""
    if path is None:
        return
    arguments = (str(path), path.stat().st_mtime_ns, True)
    threading.Thread(target=_plotly_body, args=arguments, daemon=True).start()
