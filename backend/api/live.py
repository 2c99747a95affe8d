"""Live events: one poller per app, fanning the store's event log out to every open stream.

Workers append to the `events` table (one row per metric batch, status change or snapshot);
the API is a different process, so it polls. Polling once per *stream* would make 50 open
pages cost 50 queries every 0.5 s, and once per *experiment* 200 watched experiments cost 400
a second; instead the `EventHub` polls for all of them at once (one query per 100
experiments, each an indexed range scan per experiment), serialises each event once, and
each experiment's `ExperimentFeed` hands the batch to all its `Subscription`s.

Exactly-once resume: a subscription records the feed's cursor when it joins (`start`). Every
event the feed publishes afterwards has a larger id and reaches the subscription's queue;
everything up to `start` that the client has not seen (ids after its `Last-Event-ID`) is read
from the store directly. The store gives one experiment's event ids in commit order (see
`backend.store.writes.append_event`), so reading "ids > cursor" never skips a late commit.

Every ~2 s the hub also checks that the experiments still exist and that the share tokens
their streams were opened with are still live, and ends the streams that lost their access:
revoking a link or deleting an experiment takes effect on open pages too.
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
from backend.store.access import shared_experiments
from backend.store.db import session_scope
from backend.store.models import Event, Experiment
from backend.store.queries import events_after, events_after_each, last_event_id

log = logging.getLogger(__name__)

# Every poll that finds events wakes every open stream once; at 0.5 s (0.25 s before), 50
# streams on 4 training runs cost the workers 3% of their speed instead of 9% (bench_load), and
# events reach the pages within 0.6 s at p95.
POLL_INTERVAL_S = 0.5
ACCESS_CHECK_INTERVAL_S = 2.0
RETRY_AFTER_ERROR_S = 1.0
LINGER_S = 5.0  # a feed outlives its last stream a little, so a reconnecting page reuses it
BATCH = 500
FEEDS_PER_QUERY = 100  # experiments read by one query (SQLite limits an expression's depth)
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
        self.feed.hub.leave(self)

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
    """The open streams of one experiment and how far its events have been published
    (`cursor`). The hub's poller reads new events for every feed at once and publishes them;
    a feed without streams stays `LINGER_S` (so a reconnecting page reuses it), then goes.
    """

    def __init__(self, hub: EventHub, experiment_id: str, cursor: int):
        self.hub, self.id, self.url = hub, experiment_id, hub.database_url
        self.subscribers: set[Subscription] = set()
        self.cursor = cursor
        self.idle_since: float | None = None

    def join(self, principal: Principal) -> Subscription:
        """Add a stream; synchronous, so `start` and the next published batch cannot race."""
        subscription = Subscription(self, principal, self.cursor)
        self.subscribers.add(subscription)
        self.idle_since = None
        return subscription

    def publish(self, events: list[LiveEvent]) -> None:
        self.cursor = events[-1].id
        for subscription in list(self.subscribers):
            subscription.push(events)

    def close_all(self, reason: str) -> None:
        for subscription in list(self.subscribers):
            subscription.close(reason)


class StreamLimitReached(Exception):
    """A client already holds as many open streams as it may."""

    def __init__(self, limit: int):
        super().__init__(f"at most {limit} open event streams per token")
        self.limit = limit


class EventHub:
    """The feeds of one app (one per experiment with open streams) and their one poller.

    Polling is per hub, not per feed: every `POLL_INTERVAL_S` one thread reads the new events
    of all watched experiments in one query per `FEEDS_PER_QUERY` of them, and every
    `ACCESS_CHECK_INTERVAL_S` it checks in two queries that the experiments still exist and
    that the share tokens of their streams are still live. With one poller per feed, 200
    watched experiments cost 400 thread hops and queries a second, and the queue for the
    thread pool delayed events past 1 s at p95 (docs/benchmarks.md, "Event streams").

    A client (the admin token, or one share token) may hold `max_streams_per_client` open
    streams; the next is refused (`StreamLimitReached`), so one page left reloading in a
    loop, or one link posted widely, cannot take the whole server's streams.
    """

    def __init__(self, database_url: str, max_streams_per_client: int = 100):
        self.database_url = database_url
        self.max_streams_per_client = max_streams_per_client
        self.feeds: dict[str, ExperimentFeed] = {}
        self.streams_of: dict[tuple[str, ...], set[Subscription]] = {}
        self.task: asyncio.Task | None = None

    async def subscribe(self, experiment_id: str, principal: Principal) -> Subscription:
        """Join the experiment's feed, starting one if needed (raises StreamLimitReached, or
        the store's error if the store is away)."""
        self._check_limit(principal)  # before any work: a refused stream costs no query
        if experiment_id not in self.feeds:
            cursor = await to_thread.run_sync(_newest_event_id, self.database_url, experiment_id)
            if experiment_id not in self.feeds:  # nobody started one while we read
                self.feeds[experiment_id] = ExperimentFeed(self, experiment_id, cursor)
        self._check_limit(principal)  # again, now without an await before joining
        subscription = self.feeds[experiment_id].join(principal)
        self.streams_of.setdefault(_client(principal), set()).add(subscription)
        if self.task is None:
            self.task = asyncio.create_task(self._run(), name="event feeds")
        return subscription

    def leave(self, subscription: Subscription) -> None:
        subscription.feed.subscribers.discard(subscription)
        held = self.streams_of.get(_client(subscription.principal), set())
        held.discard(subscription)
        if not held:
            self.streams_of.pop(_client(subscription.principal), None)

    def _check_limit(self, principal: Principal) -> None:
        if len(self.streams_of.get(_client(principal), ())) >= self.max_streams_per_client:
            raise StreamLimitReached(self.max_streams_per_client)

    async def close(self) -> None:
        """Stop the poller (app shutdown); the streams end."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _run(self) -> None:
        try:
            await self._poll_until_idle()
        except Exception:
            log.exception("the event feeds failed")
        finally:  # no await here: a stream that joins from now on starts a new poller
            self.task = None
            feeds, self.feeds = list(self.feeds.values()), {}
            for feed in feeds:
                feed.close_all("the server stopped this stream")

    async def _poll_until_idle(self) -> None:
        next_check = time.monotonic() + ACCESS_CHECK_INTERVAL_S
        while self.feeds:
            feeds = dict(self.feeds)
            try:
                cursors = {experiment_id: feed.cursor for experiment_id, feed in feeds.items()}
                batches, full = await to_thread.run_sync(
                    fetch_new_events, self.database_url, cursors
                )
                if time.monotonic() >= next_check:
                    await self._check_access(feeds)
                    next_check = time.monotonic() + ACCESS_CHECK_INTERVAL_S
            except Exception as error:  # the database is away: keep the streams, retry
                log.warning("event feeds: %s", error)
                await asyncio.sleep(RETRY_AFTER_ERROR_S)
                continue
            for experiment_id, events in batches.items():
                if self.feeds.get(experiment_id) is feeds[experiment_id]:  # not replaced
                    feeds[experiment_id].publish(events)
            self._drop_idle_feeds()
            if not full:
                await asyncio.sleep(POLL_INTERVAL_S)

    def _drop_idle_feeds(self) -> None:
        now = time.monotonic()
        for experiment_id, feed in list(self.feeds.items()):
            if feed.subscribers:
                feed.idle_since = None
            elif feed.idle_since is None:
                feed.idle_since = now
            elif now - feed.idle_since > LINGER_S:
                del self.feeds[experiment_id]

    async def _check_access(self, feeds: dict[str, ExperimentFeed]) -> None:
        tokens = {
            s.principal.token
            for feed in feeds.values()
            for s in feed.subscribers
            if not s.principal.admin
        }
        existing, opens = await to_thread.run_sync(_access, self.database_url, list(feeds), tokens)
        for experiment_id, feed in feeds.items():
            for subscription in list(feed.subscribers):
                if experiment_id not in existing:
                    subscription.close("the experiment was deleted")
                elif not subscription.principal.admin and (
                    opens.get(subscription.principal.token) != experiment_id
                ):
                    subscription.close("the share link was revoked")


def _client(principal: Principal) -> tuple[str, ...]:
    """Whose streams these are, for the per-client limit: the admin, or one share token."""
    return ("admin",) if principal.admin else ("share", principal.token or "")


# --- store access (run in worker threads) --------------------------------------------------


def fetch_events(url: str, experiment_id: str, after: int) -> list[LiveEvent]:
    """One experiment's events after `after` (a resuming stream's backlog)."""
    with session_scope(url) as session:
        return [_live(event) for event in events_after(session, experiment_id, after, BATCH)]


def fetch_new_events(url: str, cursors: dict[str, int]) -> tuple[dict[str, list[LiveEvent]], bool]:
    """The new events of every watched experiment, by experiment, in one session; and whether
    a query came back full (more are waiting: poll again at once)."""
    found: dict[str, list[LiveEvent]] = {}
    full = False
    items = list(cursors.items())
    with session_scope(url) as session:
        for i in range(0, len(items), FEEDS_PER_QUERY):
            chunk = dict(items[i : i + FEEDS_PER_QUERY])
            events = events_after_each(session, chunk, BATCH)
            full = full or len(events) == BATCH
            for event in events:
                found.setdefault(event.experiment_id, []).append(_live(event))
    return found, full


def _live(event: Event) -> LiveEvent:
    return LiveEvent(event.id, event.kind, json.dumps(event.payload, separators=(",", ":")))


def _newest_event_id(url: str, experiment_id: str) -> int:
    with session_scope(url) as session:
        return last_event_id(session, experiment_id)


def _access(
    url: str, experiment_ids: list[str], tokens: set[str]
) -> tuple[set[str], dict[str, str]]:
    """Which of the experiments still exist, and the experiment each live token opens."""
    with session_scope(url) as session:
        existing = set(
            session.scalars(select(Experiment.id).where(Experiment.id.in_(experiment_ids)))
        )
        return existing, shared_experiments(session, tokens)
