"""How failures become answers: always JSON with a `detail`, never a traceback.

* Validation (request bodies, query and path parameters): FastAPI's 422,
  `{"detail": [{"loc": ["body", "runs", 0, "steps"], "msg": ..., "type": ...}]}`; a body that
  is not even text (invalid UTF-8) is FastAPI's 400.
* The database or the broker is unreachable: 503 with `Retry-After`, so clients and load
  balancers wait and retry instead of reporting a bug. SQLAlchemy raises `OperationalError`
  for a refused or dropped connection and `TimeoutError` when the pool has none free.
* A value the database refuses (e.g. out of a column's range) that validation let through:
  422 without a field, rather than a 500.
* Anything else: a logged 500 with a plain message.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

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
        404: "Unknown id",
        409: "The stored spec no longer validates (made by an older version)",
        413: "Request body too large",
        429: "Too many open event streams for this token (see `Retry-After`)",
        503: "The database or the broker is unavailable",
    }
    content = {"application/json": {"schema": ErrorOut.model_json_schema()}}
    return {code: {"description": descriptions[code], "content": content} for code in codes}


# The error answers of the API's routers, for the OpenAPI document.
READ_ERRORS = documented(401, 403, 404, 503)
WRITE_ERRORS = documented(400, 401, 403, 404, 413, 503)


def unavailable(what: str) -> JSONResponse:
    return JSONResponse(
        {"detail": f"The {what} is unavailable; try again shortly."},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


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
    for error in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(error, _database_down)
    app.add_exception_handler(BrokerUnavailable, _broker_down)
    app.add_exception_handler(DataError, _refused_value)
    app.add_exception_handler(Exception, _unexpected)
