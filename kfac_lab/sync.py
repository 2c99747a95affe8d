"""`kfac_lab.sync()`: send what runs of processes that have ended left in the spool.

A run whose `finish` timed out (the server was down longer than it waited) or whose process
was killed leaves its remaining requests on disk. They are idempotent, so sending them later,
from any process on the same machine, completes the run exactly, as long as the lab has not
failed the run meanwhile for want of news (KFAC_TRACKING_TIMEOUT_S): then the server answers
409 and the requests stay in the spool's `rejected/` (see kfac_lab.sender).
"""

from __future__ import annotations

from pathlib import Path

from kfac_lab.sender import Connection, Sender
from kfac_lab.spool import Spool, default_root, owned_by_live_process


def sync(
    url: str | None = None,
    token: str | None = None,
    spool_dir: str | Path | None = None,
    timeout: float = 60.0,
) -> list[str]:
    """Send the spools left by ended processes (runs still being logged are left alone);
    returns the ids of the runs now complete on the server."""
    connection = Connection.configured(url, token)
    root = Path(spool_dir or default_root())
    done = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if not directory.is_dir() or owned_by_live_process(directory):
            continue
        sender = Sender(directory.name, Spool(directory), connection).start()
        if sender.close(timeout):
            done.append(directory.name)
    return done
