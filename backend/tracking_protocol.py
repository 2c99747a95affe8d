"""The wire contract between the tracking client and the API's tracking endpoints.

The contract is the server's, so it lives here; the client (kfac_lab/run.py, sender.py)
imports it too, so the two cannot drift apart: backend/api/tracking_schemas.py validates with
these limits, the client batches and encodes by them. Pure Python (no FastAPI, pydantic or
SQLAlchemy): importing it, with the `backend` package, costs the client nothing.
"""

from __future__ import annotations

import operator
import re
from typing import Any

RUNS_PATH = "/api/tracking/runs"
MAX_BATCH_POINTS = 10_000  # metric points in one request
MAX_BATCH_LINES = 500  # log lines in one request
MAX_LINE_CHARS = 20_000  # a log line (a traceback fits; the store cuts longer ones)
LEVEL_PATTERN = r"^[A-Z]{1,16}$"  # a log line's level: INFO, WARNING, ...
LEVEL = re.compile(LEVEL_PATTERN)
MAX_STEP = 2**31 - 1  # the store's steps are 32-bit
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,63}$"  # fits the store's 64 characters
METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


def run_path(run_id: str, what: str | None = None) -> str:
    """`/api/tracking/runs/{id}/{what}` (`metrics`, `logs`, `snapshots`, `end`)."""
    return f"{RUNS_PATH}/{run_id}/{what}" if what else f"{RUNS_PATH}/{run_id}"


def as_step(value: Any) -> int | None:
    """`value` as a step (an integer >= 0, numpy's included), or None if it is not one."""
    try:
        step = operator.index(value)
    except TypeError:
        return None
    return step if 0 <= step <= MAX_STEP else None
