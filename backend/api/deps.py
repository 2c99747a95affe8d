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
* Lookups never tell a share token whether an id outside its experiment exists: an
  experiment is checked before the database is read (403 for any other id), and a run or a
  snapshot of another experiment answers exactly as a missing one (404).

Query strings are read as strictly as bodies: a parameter the route does not declare is a 422
naming it (`extra_forbidden`, as for an unknown field of a body), and so is one that takes a
single value given twice (`too_many_values`), after authentication, so a
request without a token is a 401 whatever its query. A misspelt `max_point=` would otherwise
be ignored without a word, and the OpenAPI document (whose parameters are a closed set) would
not say what the server does.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request, params, status
from fastapi.dependencies.utils import field_annotation_is_sequence, get_flat_params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field
from sqlalchemy.orm import Session

from backend.settings import Settings
from backend.store.access import get_or_create_admin_token, use_share_token
from backend.store.db import get_session_factory, session_scope
from backend.store.models import Experiment, Run, Snapshot
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
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "A share link reads its one experiment and nothing else."
        )
    return principal


ReaderDep = Annotated[Principal, Depends(get_principal)]
AdminDep = Annotated[Principal, Depends(require_admin)]


def _declared_query(route: APIRoute) -> dict[str, bool]:
    """The query parameters `route` and its dependencies declare (by the name sent), each
    with whether it takes several values; a walk over a few dependencies (routes do not hash,
    so it is not cached)."""
    fields = get_flat_params(route.dependant)
    return {
        f.alias: field_annotation_is_sequence(f.field_info.annotation)
        for f in fields
        if isinstance(f.field_info, params.Query)
    }


def known_query(request: Request) -> None:
    """Refuse query parameters the route does not declare, and one that takes a single value
    given twice (which one would count?): 422, one error per name."""
    route = request.scope.get("route")
    declared = _declared_query(route) if isinstance(route, APIRoute) else {}
    errors = []
    for name in dict.fromkeys(request.query_params):
        values = request.query_params.getlist(name)
        if name not in declared:
            errors.append(("extra_forbidden", name, "Extra inputs are not permitted", values[-1]))
        elif len(values) > 1 and not declared[name]:
            errors.append(("too_many_values", name, "Give this parameter once", values))
    if errors:
        raise RequestValidationError(
            [
                {"type": kind, "loc": ("query", name), "msg": message, "input": value}
                for kind, name, message, value in errors
            ]
        )


def known_query_after_auth(request: Request, _: ReaderDep) -> None:
    """`known_query` for routes that need a token, checked once the token is (401 first)."""
    known_query(request)


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
    """The run, if it exists and the caller may read its experiment. A run of another
    experiment answers exactly as a missing one (404), so that a share token cannot learn
    which run ids exist."""
    run = get_run(session, run_id) if _ID.fullmatch(run_id) else None
    if run is None or not principal.may_read(run.experiment_id):
        raise not_found("run")
    return run


def load_snapshot(session: Session, principal: Principal, snapshot_id: int) -> Snapshot:
    """The snapshot, if it exists and the caller may read its run's experiment; else 404,
    whichever it is (snapshot ids are sequential: a 403 would tell how many exist)."""
    snapshot = session.get(Snapshot, snapshot_id)
    run = get_run(session, snapshot.run_id) if snapshot is not None else None
    if run is None or not principal.may_read(run.experiment_id):
        raise not_found("snapshot")
    return snapshot


def base_url(request: Request) -> str:
    """Where the pages live: `settings.public_url`, else the address this request came to."""
    return (get_settings(request).public_url or str(request.base_url)).rstrip("/")


# --- query parameters shared by the metric endpoints ---------------------------------------


MAX_NAME_LENGTH = 64
# One value of `names`: up to MAX_METRIC_NAMES comma-separated names of up to MAX_NAME_LENGTH
# characters, no NUL (PostgreSQL cannot compare with one). Published as the items' `pattern`,
# and the one rule the server applies, so the OpenAPI document says exactly what is accepted.
_NAME = rf"[^,\x00]{{0,{MAX_NAME_LENGTH}}}"
NAMES_PATTERN = rf"^{_NAME}(?:,{_NAME}){{0,{MAX_METRIC_NAMES - 1}}}$"


def requested_names(
    names: Annotated[
        list[Annotated[str, Field(pattern=NAMES_PATTERN)]] | None,
        Query(
            description=f"Metric names, repeated (`names=a&names=b`) or comma-separated: at "
            f"most {MAX_METRIC_NAMES} values of at most {MAX_METRIC_NAMES} names each, a name "
            f"at most {MAX_NAME_LENGTH} characters; default: every metric recorded",
            max_length=MAX_METRIC_NAMES,
        ),
    ] = None,
) -> list[str] | None:
    """The distinct names asked for, in order (blank ones dropped), or None for all."""
    if not names:
        return None
    wanted = dict.fromkeys(n.strip() for item in names for n in item.split(","))
    return [name for name in wanted if name] or None


MetricNamesDep = Annotated[list[str] | None, Depends(requested_names)]

MaxPoints = Annotated[
    int, Query(ge=4, le=MAX_POINTS, description="Most points per series (min/max-preserving)")
]
# Finite and well inside any integer column's range, so a query can never overflow.
XBound = Annotated[float | None, Query(allow_inf_nan=False, ge=-1e12, le=1e12)]
