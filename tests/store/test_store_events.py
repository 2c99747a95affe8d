"""Reading the event logs of many experiments at once, and many share tokens at once: what the
API's one live poller relies on."""

from __future__ import annotations

from backend.store.access import create_share_link, revoke_share_links, shared_experiments
from backend.store.db import session_scope
from backend.store.queries import events_after, events_after_each
from backend.store.writes import append_event


def test_each_experiment_gets_a_prefix_of_what_follows_its_cursor(
    db_url: str, make_experiment
) -> None:
    a, b, c = (make_experiment()[0] for _ in range(3))
    with session_scope(db_url) as session:
        for step in range(6):  # interleaved, as concurrent workers write
            for experiment_id in (a, b, c):
                append_event(session, experiment_id, "metrics", {"step": step})
    with session_scope(db_url) as session:
        logs = {e: [event.id for event in events_after(session, e, 0, None)] for e in (a, b, c)}
        cursors = {a: logs[a][1], b: 0, c: logs[c][4]}  # c (last) is not watched below
        got = events_after_each(session, {a: cursors[a], b: cursors[b]}, limit=5)
        ids = [event.id for event in got]
        assert ids == sorted(ids) and len(ids) == 5
        for experiment_id in (a, b):
            mine = [event.id for event in got if event.experiment_id == experiment_id]
            after = [i for i in logs[experiment_id] if i > cursors[experiment_id]]
            assert mine and mine == after[: len(mine)]  # a prefix: nothing skipped
        assert {event.experiment_id for event in got} == {a, b}
        assert events_after_each(session, {}) == []


def test_share_tokens_are_checked_together(db_url: str, make_experiment) -> None:
    kept, revoked = make_experiment()[0], make_experiment()[0]
    with session_scope(db_url) as session:
        live = create_share_link(session, kept)
        dead = create_share_link(session, revoked)
        revoke_share_links(session, revoked)
        assert shared_experiments(session, [live, dead, "unknown"]) == {live: kept}
        assert shared_experiments(session, []) == {}
