"""Run logs: the lines a run's worker logged (start, resume, checkpoints, warnings, divergence,
a failure's traceback) and those a tracking client sent, kept per run in `run_logs`.

The writer numbers a run's lines (`seq`, from `next_log_seq` when it starts), so a batch sent
twice, after an ambiguous failure, inserts nothing the second time (`INSERT ... ON CONFLICT DO
NOTHING` on (run_id, seq)); only new lines go into the experiment's event log (kind `logs`),
which the page tails. A run keeps its last MAX_LOG_LINES lines: older ones are deleted as new
ones arrive, so a chatty run cannot fill the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.store.db import dialect_insert
from backend.store.models import RunLogLine
from backend.store.writes import append_event, experiment_of
from backend.tracking_protocol import MAX_LINE_CHARS

MAX_LOG_LINES = 2000  # per run
LogLine = tuple[int, float, str, str]  # (seq, unix time, level, message)


def next_log_seq(session: Session, run_id: str) -> int:
    """The number the run's next line takes (a resumed run goes on after its stored lines)."""
    last = session.scalar(select(func.max(RunLogLine.seq)).where(RunLogLine.run_id == run_id))
    return 0 if last is None else last + 1


def write_log_lines(session: Session, run_id: str, lines: Sequence[LogLine]) -> int:
    """Store `lines` of a run; returns how many were new. Raises `RunNotFound`."""
    if not lines:
        return 0
    experiment_id = experiment_of(session, run_id)
    rows = {
        seq: {
            "run_id": run_id,
            "seq": seq,
            "time": datetime.fromtimestamp(when, UTC),
            "level": level[:16],
            "message": message[:MAX_LINE_CHARS],
        }
        for seq, when, level, message in lines
    }
    table = RunLogLine.__table__
    inserted = session.scalars(
        dialect_insert(session, table)
        .values(list(rows.values()))
        .on_conflict_do_nothing()
        .returning(table.c.seq)
    ).all()
    if not inserted:
        return 0
    session.execute(
        delete(RunLogLine).where(
            RunLogLine.run_id == run_id, RunLogLine.seq <= max(inserted) - MAX_LOG_LINES
        )
    )
    new = [_as_json(rows[seq]) for seq in sorted(inserted)]
    append_event(session, experiment_id, "logs", {"run_id": run_id, "lines": new})
    return len(new)


def read_log_lines(
    session: Session, run_id: str, after: int = -1, limit: int = MAX_LOG_LINES
) -> list[dict[str, Any]]:
    """The run's stored lines with `seq` > `after`, oldest first, at most `limit`."""
    rows = session.scalars(
        select(RunLogLine)
        .where(RunLogLine.run_id == run_id, RunLogLine.seq > after)
        .order_by(RunLogLine.seq)
        .limit(limit)
    )
    return [
        _as_json({"seq": r.seq, "time": r.time, "level": r.level, "message": r.message})
        for r in rows
    ]


def _as_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "seq": row["seq"],
        "time": row["time"].isoformat(),
        "level": row["level"],
        "message": row["message"],
    }
