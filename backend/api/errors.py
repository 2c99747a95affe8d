"""How failures become answers: always JSON with a `detail`, never a traceback.

* Validation (request bodies, query and path parameters): FastAPI's 422,
  `{"detail": [{"loc": ["body", "runs", 0, "steps"], "msg": ..., "type": ..., "input": ...}]}`;
  a body that is not even text (invalid UTF-8) is FastAPI's 400. The echoed `input` and `ctx`
  are made JSON-safe first: Python's JSON parser reads `NaN`, `Infinity` and `1e999999`, and
  echoing them back raised inside FastAPI's own handler (a 500 that also closed the
  keep-alive connection).
* 405: `Allow` lists the methods of every route at that path (Starlette names only those of
  the first route that matched the path, e.g. `POST` for `GET`/`POST /api/experiments`).
* The database or the broker is unreachable: 503 with `Retry-After`, so clients and load
  balancers wait and retry instead of reporting a bug. SQLAlchemy raises `OperationalError`
  for a refused or dropped connection and `TimeoutError` when the pool has none free.
* A value the database refuses (e.g. out of a column's range) that validation let through:
  422 without a field, rather than a 500.
* Anything else: a logged 500 with a plain message.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException
from starlette.routing import Match

from backend.api.service import BrokerUnavailable

log = logging.getLogger(__name__)

RETRY_AFTER_S = 5


class ErrorOut(BaseModel):
    detail: str


def documented(*codes: int) -> dict[int | str, dict]:
    """The OpenAPI entries of these error answers. Their content is given explicitly as JSON:
    FastAPI would put a `model` under the route's own media type, and so documented the HTML
    report's and the event stream's (JSON) errors as `text/html` and `text/event-stream`."""
    descriptions = {
        400: "The body cannot be decoded (not UTF-8 text)",
        401: "No token",
        403: "The token may not do this (a share link is read-only and opens one experiment)",
        404: "Unknown id, or one the token may not read",
        409: "Conflict: the stored spec no longer validates (made by an older version), an "
        "experiment of tracked runs cannot be re-run, or a write names a run it may not change",
        413: "Request body too large",
        429: "Too many open event streams for this token (see `Retry-After`)",
        503: "The database or the broker is unavailable",
    }
    content = {"application/json": {"schema": ErrorOut.model_json_schema()}}
    return {code: {"description": descriptions[code], "content": content} for code in codes}


# The error answers of the API's routers, for the OpenAPI document.
READ_ERRORS = documented(401, 403, 404, 503)
# Every route refuses query parameters it does not declare (backend.api.deps.known_query), so
# every route may answer 422, those without parameters of their own too (FastAPI documents
# its 422 only for routes with parameters).
UNKNOWN_QUERY_ERROR = {
    422: {
        "description": "Validation Error (e.g. a query parameter the route does not declare, "
        "or one that takes a single value given twice)",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
        },
    }
}
WRITE_ERRORS = documented(400, 401, 403, 404, 413, 503)


def unavailable(what: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"The {what} is unavailable; try again shortly."},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def json_safe(value: Any) -> Any:
    """`value` as plain JSON: non-finite floats as their JSON5 spelling ("NaN", "Infinity",
    "-Infinity"), exceptions (pydantic puts the ValueError of a validator in `ctx`) as their
    message, anything else as FastAPI would encode it."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, BaseException):
        return str(value)
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    encoded = jsonable_encoder(value)  # e.g. a model echoed as input: a dict of its fields
    return json_safe(encoded) if isinstance(encoded, dict | list) else encoded


async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"detail": json_safe(error.errors())}, status_code=422)


async def _http_error(request: Request, error: HTTPException) -> Response:
    # Starlette's routing 405 carries `Allow`, with the methods of one route only.
    if error.status_code == 405 and "Allow" in (error.headers or {}):
        error.headers = {**error.headers, "Allow": ", ".join(allowed_methods(request))}
    return await http_exception_handler(request, error)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route answers at the request's path. Each method is tried on the
    whole routing table (FastAPI nests included routers, so the table is not a flat list)."""

    def answers(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)

    return [method for method in _METHODS if answers(method)]


async def _database_down(request: Request, error: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", error.__class__.__name__)
    return unavailable("database")


async def _broker_down(request: Request, error: Exception) -> JSONResponse:
    return unavailable("task broker")


async def _refused_value(request: Request, error: Exception) -> JSONResponse:
    log.info("database refused a value: %s", error)
    message = "A value is out of the range the store accepts."
    return JSONResponse({"detail": [{"loc": [], "msg": message, "type": "value_error"}]}, 422)


async def _unexpected(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "Internal server error."}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    for error in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(error, _database_down)
    app.add_exception_handler(BrokerUnavailable, _broker_down)
    app.add_exception_handler(DataError, _refused_value)
    app.add_exception_handler(Exception, _unexpected)
