"""Live events: one poller per experiment, fanning the store's event log out to every open stream.

Workers append to the `events` table (one row per metric batch, status change or snapshot);
the API is a different process, so it polls. Polling once per *stream* would make 50 open
pages cost 50 queries every 0.5 s; instead each experiment with open streams has one
`ExperimentFeed` task that reads new events (one indexed range query per poll), serialises
each event once, and hands the batch to all its `Subscription`s.

Exactly-once resume: a subscription records the feed's cursor when it joins (`start`). Every
event the feed publishes afterwards has a larger id and reaches the subscription's queue;
everything up to `start` that the client has not seen (ids after its `Last-Event-ID`) is read
from the store directly. The store gives one experiment's event ids in commit order (see
`backend.store.writes.append_event`), so reading "ids > cursor" never skips a late commit.

Every ~2 s a feed also checks that its experiment still exists and that the share tokens its
streams were opened with are still live, and ends the streams that lost their access: revoking
a link or deleting an experiment takes effect on open pages too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import InitVar, dataclass, field

from anyio import to_thread
from sqlalchemy import select

from backend.api.deps import Principal
from backend.store.access import shared_experiment
from backend.store.db import session_scope
from backend.store.models import Experiment
from backend.store.queries import events_after, last_event_id

log = logging.getLogger(__name__)

# Every poll that finds events wakes every open stream once; at 0.5 s (0.25 s before), 50
# streams on 4 training runs cost the workers 3% of their speed instead of 9% (bench_load), and
# events reach the pages within 0.6 s at p95.
POLL_INTERVAL_S = 0.5
ACCESS_CHECK_INTERVAL_S = 2.0
RETRY_AFTER_ERROR_S = 1.0
LINGER_S = 5.0  # a feed outlives its last stream a little, so a reconnecting page reuses it
BATCH = 500
MAX_PENDING = 20_000  # events queued for one stream; a stream this far behind is ended


@dataclass(frozen=True, slots=True)
class LiveEvent:
    id: int
    kind: str  # metrics | status | snapshot
    data: InitVar[str]  # the payload as JSON text (one line)
    frame: bytes = field(init=False)  # the event on the wire, encoded once for all streams

    def __post_init__(self, data: str) -> None:
        object.__setattr__(self, "frame", sse_frame(self.kind, data, self.id))


def sse_frame(kind: str, data: str, event_id: int | None = None) -> bytes:
    """One server-sent event; `data` must be a single line (compact JSON is)."""
    event_line = "" if event_id is None else f"id: {event_id}\n"
    return f"event: {kind}\ndata: {data}\n{event_line}\n".encode()


class Subscription:
    """One open stream's place in its experiment's feed."""

    def __init__(self, feed: ExperimentFeed, principal: Principal, start: int):
        self.feed = feed
        self.principal = principal
        self.start = start
        self.end_reason: str | None = None
        self.resumable = False  # ended by the server for its own sake: the page just reconnects
        self._pending: deque[LiveEvent] = deque()
        self._wakeup = asyncio.Event()

    def push(self, events: list[LiveEvent]) -> None:
        if len(self._pending) + len(events) > MAX_PENDING:
            self.close("too far behind", resumable=True)
            return
        self._pending.extend(events)
        self._wakeup.set()

    def close(self, reason: str, resumable: bool = False) -> None:
        if self.end_reason is None:
            self.end_reason, self.resumable = reason, resumable
        self._wakeup.set()

    def leave(self) -> None:
        self.feed.subscribers.discard(self)

    async def batches(
        self, after: int | None, idle_s: float | None = None
    ) -> AsyncIterator[list[LiveEvent]]:
        """Every event with id > `after` (default: from now on), each once, in id order,
        until the stream is closed; in batches of what has arrived since the last one, so a
        stream makes one write per wakeup, not one per event. After `idle_s` seconds without
        an event (if given) it yields an empty batch: time for a keep-alive."""
        last = self.start if after is None else after
        while last < self.start:  # what the feed published before this stream joined
            batch = await to_thread.run_sync(fetch_events, self.feed.url, self.feed.id, last)
            backlog = [event for event in batch if event.id <= self.start]
            if backlog:
                yield backlog
                last = backlog[-1].id
            if len(backlog) < len(batch) or len(batch) < BATCH:
                break
        while True:
            while not self._pending and self.end_reason is None:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), idle_s)
                except TimeoutError:
                    yield []
            if not self._pending:
                return
            batch = [event for event in self._pending if event.id > last]
            self._pending.clear()
            if batch:
                yield batch
                last = batch[-1].id


class ExperimentFeed:
    """The poller of one experiment; runs while it has subscribers (and `LINGER_S` after).

    A feed is in its hub's `feeds` exactly while it runs: it removes itself synchronously
    (no await between deciding to stop and leaving), so a stream never joins a dead feed.
    """

    def __init__(self, hub: EventHub, experiment_id: str, cursor: int):
        self.hub, self.id, self.url = hub, experiment_id, hub.database_url
        self.subscribers: set[Subscription] = set()
        self.cursor = cursor
        self.task = asyncio.create_task(self._run(), name=f"event feed {experiment_id}")

    def join(self, principal: Principal) -> Subscription:
        """Add a stream; synchronous, so `start` and the next published batch cannot race."""
        subscription = Subscription(self, principal, self.cursor)
        self.subscribers.add(subscription)
        return subscription

    async def _run(self) -> None:
        try:
            await self._poll_until_idle()
        except Exception:
            log.exception("event feed of experiment %s failed", self.id)
        finally:
            if self.hub.feeds.get(self.id) is self:
                del self.hub.feeds[self.id]
            for subscription in list(self.subscribers):
                subscription.close("the server stopped this stream")

    async def _poll_until_idle(self) -> None:
        next_check = time.monotonic() + ACCESS_CHECK_INTERVAL_S
        idle_since: float | None = None
        while True:
            try:
                events = await to_thread.run_sync(fetch_events, self.url, self.id, self.cursor)
                if time.monotonic() >= next_check:
                    await self._check_access()
                    next_check = time.monotonic() + ACCESS_CHECK_INTERVAL_S
            except Exception as error:  # the database is away: keep the streams, retry
                log.warning("event feed of experiment %s: %s", self.id, error)
                await asyncio.sleep(RETRY_AFTER_ERROR_S)
                continue
            if events:
                self.cursor = events[-1].id
                for subscription in list(self.subscribers):
                    subscription.push(events)
            if self.subscribers:
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > LINGER_S:
                return
            if len(events) < BATCH:
                await asyncio.sleep(POLL_INTERVAL_S)

    async def _check_access(self) -> None:
        tokens = {s.principal.token for s in self.subscribers if not s.principal.admin}
        exists, live = await to_thread.run_sync(_access, self.url, self.id, tokens)
        for subscription in list(self.subscribers):
            if not exists:
                subscription.close("the experiment was deleted")
            elif not subscription.principal.admin and subscription.principal.token not in live:
                subscription.close("the share link was revoked")


class EventHub:
    """The feeds of one app (one per experiment with open streams)."""

    def __init__(self, database_url: str):
        self.database_url = database_url
        self.feeds: dict[str, ExperimentFeed] = {}

    async def subscribe(self, experiment_id: str, principal: Principal) -> Subscription:
        """Join the experiment's feed, starting one if needed (raises if the store is away)."""
        if experiment_id not in self.feeds:
            cursor = await to_thread.run_sync(_newest_event_id, self.database_url, experiment_id)
            if experiment_id not in self.feeds:  # nobody started one while we read
                self.feeds[experiment_id] = ExperimentFeed(self, experiment_id, cursor)
        return self.feeds[experiment_id].join(principal)

    async def close(self) -> None:
        """Stop every feed (app shutdown); their streams end."""
        feeds = list(self.feeds.values())
        for feed in feeds:
            feed.task.cancel()
        await asyncio.gather(*(feed.task for feed in feeds), return_exceptions=True)


# --- store access (run in worker threads) --------------------------------------------------


def fetch_events(url: str, experiment_id: str, after: int) -> list[LiveEvent]:
    with session_scope(url) as session:
        return [
            LiveEvent(event.id, event.kind, json.dumps(event.payload, separators=(",", ":")))
            for event in events_after(session, experiment_id, after, limit=BATCH)
        ]


def _newest_event_id(url: str, experiment_id: str) -> int:
    with session_scope(url) as session:
        return last_event_id(session, experiment_id)


def _access(url: str, experiment_id: str, tokens: set[str]) -> tuple[bool, set[str]]:
    """Whether the experiment still exists, and which of `tokens` still open it."""
    with session_scope(url) as session:
        exists = session.scalar(select(Experiment.id).where(Experiment.id == experiment_id))
        live = {t for t in tokens if shared_experiment(session, t) == experiment_id}
    return exists is not None, live
