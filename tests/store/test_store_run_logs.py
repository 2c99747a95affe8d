"""Run logs in the store: numbered per run, written once per number (a retried batch adds
nothing and sends no second event), bounded to the last MAX_LOG_LINES lines of each run."""

from __future__ import annotations

import pytest

from backend.store import run_logs
from backend.store.db import session_scope
from backend.store.queries import events_after
from backend.store.run_logs import next_log_seq, read_log_lines, write_log_lines
from backend.store.writes import RunNotFound


def lines(start: int, count: int, text: str = "line") -> list[tuple[int, float, str, str]]:
    return [(seq, 1.7e9 + seq, "INFO", f"{text} {seq}") for seq in range(start, start + count)]


def test_lines_are_written_once_and_read_after_a_seq(db_url, make_experiment):
    experiment_id, (run_id, other_id) = make_experiment(2)
    with session_scope(db_url) as session:
        assert next_log_seq(session, run_id) == 0
        assert write_log_lines(session, run_id, lines(0, 3)) == 3
        assert write_log_lines(session, other_id, lines(0, 1, "other")) == 1
    with session_scope(db_url) as session:  # a retry of the batch, and one overlapping it
        assert write_log_lines(session, run_id, lines(0, 3)) == 0
        assert write_log_lines(session, run_id, lines(2, 2)) == 1
        assert next_log_seq(session, run_id) == 4
        stored = read_log_lines(session, run_id)
        assert [line["message"] for line in stored] == [f"line {i}" for i in range(4)]
        assert stored[0]["time"].startswith("2023-11-14T22:13:20") and stored[0]["level"] == "INFO"
        assert [line["seq"] for line in read_log_lines(session, run_id, after=1)] == [2, 3]
        events = [e for e in events_after(session, experiment_id, 0) if e.kind == "logs"]
    sent = [
        [line["seq"] for line in e.payload["lines"]]
        for e in events
        if e.payload["run_id"] == run_id
    ]
    assert sent == [[0, 1, 2], [3]]  # only new lines go to the page


def test_a_run_keeps_its_last_lines(db_url, make_experiment, monkeypatch):
    monkeypatch.setattr(run_logs, "MAX_LOG_LINES", 5)
    _, (run_id,) = make_experiment(1)
    with session_scope(db_url) as session:
        write_log_lines(session, run_id, lines(0, 4))
        write_log_lines(session, run_id, lines(4, 4))
        assert [line["seq"] for line in read_log_lines(session, run_id)] == [3, 4, 5, 6, 7]
        long = [(8, 1.7e9, "ERROR", "x" * (run_logs.MAX_LINE_CHARS + 10))]
        write_log_lines(session, run_id, long)
        assert len(read_log_lines(session, run_id, after=7)[0]["message"]) == (
            run_logs.MAX_LINE_CHARS
        )
        assert next_log_seq(session, run_id) == 9


def test_a_missing_run_is_refused(db_url):
    with session_scope(db_url) as session, pytest.raises(RunNotFound):
        write_log_lines(session, "0" * 32, lines(0, 1))
