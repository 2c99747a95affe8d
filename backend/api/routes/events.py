"""The live event stream of an experiment (server-sent events).

Each event carries its store id as the SSE `id`, so a client that reconnects with
`Last-Event-ID` receives exactly what it missed; a page that has just loaded its data starts
from the `last_event_id` that came with it. The token comes in the `Authorization` header
like everywhere else, so browsers read the stream with `fetch` (frontend/js/live.js), not
with EventSource, which cannot send one. `?last_event_id=` is also accepted, for clients
that cannot set headers at all; the header wins over it.

Events (`event:` name, `data:` JSON):
* `metrics` — `{"run_id", "series": {NAME: {"step": [...], "wall_time": [...], "value": [...]}}}`
* `status` — `{"run_id", "status", "step", "error", "experiment_status"}`
* `snapshot` — `{"run_id", "snapshot_id", "step", "kinds"}`
* `logs` — `{"run_id", "lines": [{"seq", "time", "level", "message"}, ...]}` (new log lines)
* `end` — `{"reason"}`, last, when the stream ends for good (experiment deleted, share link
  revoked). A stream the server ends for its own sake (too far behind, shutdown) just stops,
  and the page reconnects with `Last-Event-ID`.
A comment line is sent every 15 s when nothing else is, to keep proxies from closing it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from backend.api.deps import ReaderDep, get_settings, load_experiment
from backend.api.errors import READ_ERRORS, documented
from backend.api.live import StreamLimitReached, Subscription, sse_frame
from backend.store.db import session_scope

router = APIRouter(tags=["events"], responses={**READ_ERRORS, **documented(429)})

RECONNECT_MS = 1000
LIMIT_RETRY_AFTER_S = 10  # a page waits this long before it tries again, past the limit
KEEPALIVE_S = 15.0
OPENING = f": stream open\nretry: {RECONNECT_MS}\n\n".encode()
KEEPALIVE = b": keep-alive\n\n"
EventId = Annotated[int | None, Query(ge=0, le=2**63 - 1)]


def _check_experiment(request: Request, principal: ReaderDep, experiment_id: str) -> None:
    """404 / 403 before the stream starts; in a session of its own, since a stream's
    request-scoped session would hold a database connection for as long as it is open."""
    with session_scope(get_settings(request).database_url) as session:
        load_experiment(session, principal, experiment_id)


async def subscription(
    request: Request,
    principal: ReaderDep,
    experiment_id: Annotated[str, Path(max_length=64)],
) -> AsyncIterator[Subscription]:
    """A place in the experiment's live feed, given back when the answer is over, however it
    ends (the body fully sent, the client gone, even before the body began): a place kept
    by mistake would count against the client's stream limit for good."""
    await run_in_threadpool(_check_experiment, request, principal, experiment_id)
    try:
        joined = await request.app.state.event_hub.subscribe(experiment_id, principal)
    except StreamLimitReached as refused:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"Too many open event streams: this token may hold {refused.limit} at once "
            "(KFAC_MAX_STREAMS_PER_CLIENT). Close some pages, or try again later.",
            headers={"Retry-After": str(LIMIT_RETRY_AFTER_S)},
        ) from None
    try:
        yield joined
    finally:
        joined.leave()


def resume_after(
    last_event_id_header: Annotated[
        int | None, Header(alias="Last-Event-ID", ge=0, le=2**63 - 1, include_in_schema=False)
    ] = None,
    last_event_id: Annotated[
        int | None,
        Query(ge=0, le=2**63 - 1, description="Send the events after this id"),
    ] = None,
) -> int | None:
    return last_event_id_header if last_event_id_header is not None else last_event_id


class EventStream(StreamingResponse):
    """A `text/event-stream` response (its media type also documents the route in OpenAPI)."""

    media_type = "text/event-stream"


@router.get("/experiments/{experiment_id}/events", response_class=EventStream)
async def events(
    joined: Annotated[Subscription, Depends(subscription)],
    after: Annotated[int | None, Depends(resume_after)],
) -> EventStream:
    """New metric points, run status changes and snapshots of the experiment, as they are
    written; resumable with `Last-Event-ID`. Without one, the stream starts from now."""
    return EventStream(
        _frames(joined, after),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # no proxy buffering
    )


async def _frames(joined: Subscription, after: int | None) -> AsyncIterator[bytes]:
    """The stream's bytes: each frame encoded once per feed (`LiveEvent.frame`) and all that
    arrived together written at once; with 50 pages open, per-event work in this loop is
    what the API's CPU goes on."""
    yield OPENING
    async for batch in joined.batches(after, idle_s=KEEPALIVE_S):
        yield b"".join(event.frame for event in batch) if batch else KEEPALIVE
    if not joined.resumable:
        yield sse_frame("end", json.dumps({"reason": joined.end_reason}))
