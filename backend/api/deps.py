"""Request dependencies: settings, the database session, who is asking, and the lookups every
router repeats (an experiment or a run the caller may read).

Access, and why it looks like this:

* A token comes as `Authorization: Bearer TOKEN` and in no other way: a token in a URL would
  land in access logs, proxies and browser histories (the pages read their event stream and
  downloads with `fetch`, which sends the header). No token: 401. A token that is neither the
  admin token nor a live share token: 403.
* The admin token is `settings.admin_token` or, when unset, the one generated and stored with
  the data on first use; it is read once per process (it never changes) and compared in
  constant time.
* A share token is looked up (by hash) on every request, so revoking it takes effect at once.
  It reads one experiment and nothing else; every write needs the admin token.
* Lookups check the share token's experiment before touching the database, so a share token
  cannot even learn whether another experiment exists.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.settings import Settings
from backend.store.access import get_or_create_admin_token, use_share_token
from backend.store.db import get_session_factory, session_scope
from backend.store.models import Experiment, Run
from backend.store.queries import get_experiment, get_run

# Limits of one request (the body limit is the app's `max_body_size`).
MAX_BODY_BYTES = 1_000_000
MAX_POINTS = 10_000
MAX_PAGE_SIZE = 200
MAX_METRIC_NAMES = 32

_ID = re.compile(r"[0-9a-f]{32}")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request. It is closed as soon as the endpoint returns (scope
    "function"), so its connection goes back to the pool before the answer is sent; writes
    commit explicitly in the endpoint, where a failure can still become a 503."""
    session = get_session_factory(get_settings(request).database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


# --- who is asking -------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """The admin (reads and writes everything) or a share token's holder (reads one
    experiment, `experiment_id`)."""

    admin: bool
    experiment_id: str | None = None
    token: str | None = None  # a share token, kept to re-check it on long streams

    def may_read(self, experiment_id: str) -> bool:
        return self.admin or self.experiment_id == experiment_id

    def check_read(self, experiment_id: str) -> None:
        if not self.may_read(experiment_id):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "This token cannot read that.")


_bearer = HTTPBearer(auto_error=False, description="The admin token or a share token")


def admin_token(request: Request) -> str:
    """The admin token: from the settings, else the stored one (created on first use)."""
    state = request.app.state
    if getattr(state, "admin_token", None) is None:
        configured = get_settings(request).admin_token
        if configured:
            state.admin_token = configured
        else:
            with session_scope(get_settings(request).database_url) as session:
                state.admin_token = get_or_create_admin_token(session)
    return state.admin_token


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    token = credentials.credentials if credentials else None
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "A token is needed: `Authorization: Bearer TOKEN`.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if hmac.compare_digest(token.encode(), admin_token(request).encode()):
        return Principal(admin=True)
    with session_scope(get_settings(request).database_url) as session:
        use = use_share_token(session, token)
    if use.revoked:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "This share link was revoked by the experiment's owner; ask them for a new one.",
        )
    if use.experiment_id is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Unknown token: it opens nothing here.")
    return Principal(admin=False, experiment_id=use.experiment_id, token=token)


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    if not principal.admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "A share link is read-only.")
    return principal


ReaderDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]


# --- lookups -------------------------------------------------------------------------------


def not_found(what: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"No such {what}.")


def load_experiment(session: Session, principal: Principal, experiment_id: str) -> Experiment:
    """The experiment with its runs, if it exists and the caller may read it."""
    principal.check_read(experiment_id)
    experiment = get_experiment(session, experiment_id) if _ID.fullmatch(experiment_id) else None
    if experiment is None:
        raise not_found("experiment")
    return experiment


def load_run(session: Session, principal: Principal, run_id: str) -> Run:
    """The run, if it exists and the caller may read its experiment."""
    run = get_run(session, run_id) if _ID.fullmatch(run_id) else None
    if run is None:
        raise not_found("run")
    principal.check_read(run.experiment_id)
    return run


def base_url(request: Request) -> str:
    """Where the pages live: `settings.public_url`, else the address this request came to."""
    return (get_settings(request).public_url or str(request.base_url)).rstrip("/")


# --- query parameters shared by the metric endpoints ---------------------------------------


def requested_names(
    names: Annotated[
        list[str] | None,
        Query(
            description="Metric names, repeated (`names=a&names=b`) or comma-separated; "
            "default: every metric recorded",
            max_length=MAX_METRIC_NAMES,
        ),
    ] = None,
) -> list[str] | None:
    if not names:
        return None
    wanted = list(dict.fromkeys(n.strip() for item in names for n in item.split(",")))
    wanted = [name for name in wanted if name]
    for name in wanted:
        if len(name) > 64 or "\x00" in name:
            raise _query_error("names", f"not a metric name: {name[:80]!r}")
    if len(wanted) > MAX_METRIC_NAMES:
        raise _query_error("names", f"at most {MAX_METRIC_NAMES} names")
    return wanted or None


MetricNamesDep = Annotated[list[str] | None, Depends(requested_names)]

MaxPoints = Annotated[
    int, Query(ge=4, le=MAX_POINTS, description="Most points per series (min/max-preserving)")
]
# Finite and well inside any integer column's range, so a query can never overflow.
XBound = Annotated[float | None, Query(allow_inf_nan=False, ge=-1e12, le=1e12)]


def _query_error(field: str, message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": None}]
    )
