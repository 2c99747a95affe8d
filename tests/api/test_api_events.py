"""The live event stream, through a real uvicorn server: resume with Last-Event-ID yields
exactly the missing events once, live events reach every stream, many streams share one
poller, and streams end when their access ends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from fastapi.testclient import TestClient

from backend.api import live
from backend.api.main import create_app
from backend.settings import Settings
from backend.store.db import session_scope
from backend.store.queries import events_after
from backend.store.results import write_metrics
from tests.api.conftest import ADMIN, LiveServer

# How long a test waits for what the server will do: generous, for a machine at load ~10;
# waiting polls, so an idle machine waits no longer than the answer takes.
WAIT_S = 60.0


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"waited {WAIT_S} s for {what}"
        await asyncio.sleep(0.05)


class EventStream:
    """A minimal SSE client: parses `id`, `event` and `data` fields into dicts."""

    def __init__(self, response: httpx.Response):
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = WAIT_S) -> dict | None:
        """The next event (comments and retry-only messages skipped); None at the end."""
        event: dict = {}
        while True:
            try:
                line = await asyncio.wait_for(anext(self._lines), timeout)
            except StopAsyncIteration:
                return None
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")
            elif "event" in event or "data" in event:
                return event
            else:
                event = {}

    async def take(self, n: int, timeout: float = WAIT_S) -> list[dict]:
        return [await self.next(timeout) for _ in range(n)]

    async def quiet(self, seconds: float) -> bool:
        """True if no event arrives within `seconds`."""
        try:
            await self.next(timeout=seconds)
        except TimeoutError:
            return True
        return False


@asynccontextmanager
async def open_stream(
    server: LiveServer, experiment_id: str, headers: dict | None = None, **params
) -> AsyncIterator[EventStream]:
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as client,
        client.stream(
            "GET",
            f"/api/experiments/{experiment_id}/events",
            headers={**ADMIN, **(headers or {})},
            params=params,
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)


def write_batch(db_url: str, run_id: str, step: int) -> None:
    """One metric batch, as a worker writes it: one `metrics` event."""
    with session_scope(db_url) as session:
        write_metrics(session, run_id, [("train_loss", step, float(step), 1.0 / (1 + step))])


def event_ids(db_url: str, experiment_id: str) -> list[int]:
    with session_scope(db_url) as session:
        return [e.id for e in events_after(session, experiment_id, 0)]


@pytest.fixture
def experiment(create: Callable[..., dict]) -> dict:
    return create()


async def test_resume_yields_exactly_the_missing_events_once(
    live_server: LiveServer, experiment: dict, db_url: str
) -> None:
    run_id = experiment["runs"][0]["id"]
    for step in range(5):
        write_batch(db_url, run_id, step)
    ids = event_ids(db_url, experiment["id"])
    assert len(ids) == 5

    async with open_stream(live_server, experiment["id"], {"Last-Event-ID": str(ids[1])}) as s:
        backlog = await s.take(3)
        assert [int(e["id"]) for e in backlog] == ids[2:]
        assert {e["event"] for e in backlog} == {"metrics"}
        assert json.loads(backlog[0]["data"])["series"]["train_loss"]["step"] == [2]
        for step in (5, 6):
            await asyncio.to_thread(write_batch, db_url, run_id, step)
        live = await s.take(2)
        steps = [json.loads(e["data"])["series"]["train_loss"]["step"] for e in live]
        assert steps == [[5], [6]]
        assert [int(e["id"]) for e in live] == event_ids(db_url, experiment["id"])[5:]
        assert await s.quiet(1.0)  # nothing twice

    # The header wins over the query (EventSource keeps the URL it was opened with).
    async with open_stream(
        live_server, experiment["id"], {"Last-Event-ID": str(ids[3])}, last_event_id=0
    ) as s:
        assert [int(e["id"]) for e in await s.take(3)] == event_ids(db_url, experiment["id"])[4:]
    async with open_stream(live_server, experiment["id"], last_event_id=ids[4]) as s:
        assert len(await s.take(2)) == 2


async def test_a_fresh_stream_starts_from_now_and_status_events_arrive(
    live_server: LiveServer, experiment: dict, db_url: str, broker
) -> None:
    run_id = experiment["runs"][0]["id"]
    write_batch(db_url, run_id, 0)
    async with open_stream(live_server, experiment["id"]) as s:
        async with httpx.AsyncClient(base_url=live_server.url) as client:
            answer = await client.post(f"/api/runs/{run_id}/cancel", headers=ADMIN)
            assert answer.status_code == 200
        event = await s.next()
        assert event["event"] == "status"
        assert json.loads(event["data"]) | {"error": None} == {
            "run_id": run_id,
            "status": "cancelled",
            "step": 0,
            "error": None,
            "experiment_status": "running",
        }


async def test_many_streams_share_one_poller_and_leave_when_closed(
    live_server: LiveServer, experiment: dict, db_url: str
) -> None:
    run_id = experiment["runs"][1]["id"]
    hub = live_server.app.state.event_hub
    async with AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(open_stream(live_server, experiment["id"]))
            for _ in range(8)
        ]
        assert list(hub.feeds) == [experiment["id"]]
        assert len(hub.feeds[experiment["id"]].subscribers) == 8
        await asyncio.to_thread(write_batch, db_url, run_id, 1)
        received = await asyncio.gather(*(stream.next() for stream in opened))
    assert len({event["data"] for event in received}) == 1  # all eight got the same event
    await eventually(
        lambda: not getattr(hub.feeds.get(experiment["id"]), "subscribers", None),
        "the closed streams to leave the feed",
    )


async def test_streams_end_when_access_ends(
    live_server: LiveServer, create: Callable[..., dict], client: TestClient
) -> None:
    shared, deleted = create(), create()
    token = client.post(f"/api/experiments/{shared['id']}/share", headers=ADMIN).json()["token"]
    viewer = {"Authorization": f"Bearer {token}"}
    async with (
        open_stream(live_server, shared["id"], viewer) as share_stream,
        open_stream(live_server, deleted["id"]) as admin_stream,
    ):
        client.delete(f"/api/experiments/{shared['id']}/share", headers=ADMIN)
        client.delete(f"/api/experiments/{deleted['id']}", headers=ADMIN)
        ended = await share_stream.next()
        assert ended["event"] == "end" and "revoked" in ended["data"]
        assert await share_stream.next() is None
        ended = await admin_stream.next()
        assert ended["event"] == "end" and "deleted" in ended["data"]


async def test_streams_check_access_first(
    live_server: LiveServer, create: Callable[..., dict], client: TestClient
) -> None:
    mine, other = create(), create()
    token = client.post(f"/api/experiments/{mine['id']}/share", headers=ADMIN).json()["token"]
    async with httpx.AsyncClient(base_url=live_server.url, timeout=WAIT_S) as http:
        path = "/api/experiments/{}/events"
        assert (await http.get(path.format(mine["id"]))).status_code == 401
        shared = {"Authorization": f"Bearer {token}"}
        forbidden = await http.get(path.format(other["id"]), headers=shared)
        assert forbidden.status_code == 403
        missing = await http.get(path.format("0" * 32), headers=ADMIN)
        assert missing.status_code == 404
        by_query = await http.get(path.format(mine["id"]), params={"token": token})
        assert by_query.status_code == 401  # a token is never taken from the URL
        async with http.stream("GET", path.format(mine["id"]), headers=shared) as ok:
            assert ok.status_code == 200


async def test_a_stream_too_far_behind_stops_without_an_end_so_the_page_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "MAX_PENDING", 2)
    subscription = live.Subscription(feed=None, principal=None, start=0)
    subscription.push([live.LiveEvent(1, "metrics", "{}")])
    subscription.push([live.LiveEvent(2, "metrics", "{}"), live.LiveEvent(3, "metrics", "{}")])
    assert subscription.resumable and subscription.end_reason == "too far behind"
    # What was queued still goes out; the rest the page fetches when it reconnects.
    assert [[e.id for e in batch] async for batch in subscription.batches(after=None)] == [[1]]
    subscription.close("experiment deleted")  # a later reason does not make it final
    assert subscription.resumable


async def test_one_poll_reads_every_watched_experiment(
    live_server: LiveServer, create: Callable[..., dict], db_url: str, monkeypatch
) -> None:
    """Streams on five experiments: each poll of the store asks about all five at once (one
    poller per experiment made 200 watched experiments cost 400 queries a second)."""
    asked: list[set[str]] = []
    read = live.events_after_each

    def spy(session, cursors, limit=500):
        asked.append(set(cursors))
        return read(session, cursors, limit)

    monkeypatch.setattr(live, "events_after_each", spy)
    experiments = [create() for _ in range(5)]
    ids = {experiment["id"] for experiment in experiments}
    async with AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(open_stream(live_server, experiment["id"]))
            for experiment in experiments
        ]
        asked.clear()
        for experiment in experiments:
            await asyncio.to_thread(write_batch, db_url, experiment["runs"][0]["id"], 1)
        received = await asyncio.gather(*(stream.next() for stream in streams))
    assert [json.loads(e["data"])["run_id"] for e in received] == [
        experiment["runs"][0]["id"] for experiment in experiments
    ]
    assert asked and all(cursors == ids for cursors in asked), asked


async def test_a_token_past_its_stream_limit_gets_a_clear_429(
    live_server: LiveServer, create: Callable[..., dict], client: TestClient
) -> None:
    hub = live_server.app.state.event_hub
    hub.max_streams_per_client = 2
    first, second = create(), create()
    token = client.post(f"/api/experiments/{first['id']}/share", headers=ADMIN).json()["token"]
    path = "/api/experiments/{}/events"
    async with (
        open_stream(live_server, first["id"]),
        open_stream(live_server, second["id"]) as admin_stream,
        httpx.AsyncClient(base_url=live_server.url, timeout=WAIT_S) as http,
    ):
        refused = await http.get(path.format(first["id"]), headers=ADMIN)
        assert refused.status_code == 429
        assert int(refused.headers["retry-after"]) > 0
        detail = refused.json()["detail"]
        assert "2" in detail and "KFAC_MAX_STREAMS_PER_CLIENT" in detail
        # Another client (a share token) has a limit of its own.
        async with open_stream(live_server, first["id"], {"Authorization": f"Bearer {token}"}):
            pass
        await admin_stream.response.aclose()  # a page closed: its place is free again
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while True:
            async with http.stream("GET", path.format(second["id"]), headers=ADMIN) as again:
                if again.status_code == 200:
                    break
            assert asyncio.get_running_loop().time() < deadline, (
                "the closed stream's place was not given back"
            )
            await asyncio.sleep(0.1)


def test_the_stream_limit_is_a_setting(settings: Settings, broker) -> None:
    settings.max_streams_per_client = 3
    assert create_app(settings).state.event_hub.max_streams_per_client == 3


async def test_a_refused_request_keeps_no_place_in_the_feed(
    live_server: LiveServer, experiment: dict
) -> None:
    """A request that joined the feed and was then refused (a bad `Last-Event-ID`: 422)
    gives its place back, or it would count against the client's limit for good."""
    hub = live_server.app.state.event_hub
    hub.max_streams_per_client = 1
    path = f"/api/experiments/{experiment['id']}/events"
    async with httpx.AsyncClient(base_url=live_server.url, timeout=WAIT_S) as http:
        for _ in range(2):
            bad = await http.get(path, headers={**ADMIN, "Last-Event-ID": "-1"})
            assert bad.status_code == 422
    assert not hub.feeds[experiment["id"]].subscribers and not hub.streams_of
    async with open_stream(live_server, experiment["id"]):
        pass
