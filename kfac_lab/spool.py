"""A run's requests on disk, in order, until the server has taken them.

Every request the client makes (create the run, a metric batch, a snapshot, end the run) is
first written here as one JSON file named by its sequence number, then sent, then deleted.
So a server that is down or slow costs memory nothing and loses nothing: the files wait,
bounded by `max_bytes`; a process that dies leaves them for `kfac_lab.sync()`. Each file is
written to a temporary name and renamed, so a crash never leaves half a request behind. All
requests are idempotent on the server, so a request sent twice (sent, then the process died
before deleting its file) changes nothing.

Only the sender thread of a run touches its spool; `owner` records which process that is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

logger = logging.getLogger("kfac_lab")

SUFFIX = ".json"
MAX_BYTES = 512 * 2**20  # per run; beyond it new records are dropped (with a warning)


def default_root() -> Path:
    """`KFAC_LAB_SPOOL`, else the user's cache directory."""
    configured = os.environ.get("KFAC_LAB_SPOOL")
    return Path(configured) if configured else Path.home() / ".cache" / "kfac-lab" / "spool"


class Spool:
    """The requests of one run (`directory`), oldest first."""

    def __init__(self, directory: Path, max_bytes: int = MAX_BYTES):
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        files = self.files()
        self._next = int(files[-1].stem) + 1 if files else 0
        self._bytes = sum(path.stat().st_size for path in files)

    def claim(self) -> None:
        """Record this process as the spool's owner (see `owned_by_live_process`)."""
        (self.directory / "owner").write_text(f"{socket.gethostname()} {os.getpid()}")

    def release(self) -> None:
        """No process owns the spool any more: `kfac_lab.sync()` may send what is left."""
        (self.directory / "owner").unlink(missing_ok=True)

    def put(self, path: str, body: Any) -> bool:
        """Append a request; False (and nothing written) if the spool would exceed its bound
        or the body is not JSON."""
        try:
            data = json.dumps({"path": path, "body": body}, allow_nan=False).encode()
        except (TypeError, ValueError) as error:
            logger.warning("kfac_lab: a record for %s is not JSON (%s); dropped", path, error)
            return False
        if self._bytes + len(data) > self.max_bytes:
            return False
        name = f"{self._next:012d}"
        temporary = self.directory / f"{name}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.directory / f"{name}{SUFFIX}")
        self._next += 1
        self._bytes += len(data)
        return True

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def oldest(self) -> tuple[Path, dict[str, Any]] | None:
        files = self.files()
        if not files:
            return None
        return files[0], json.loads(files[0].read_bytes())

    def remove(self, path: Path) -> None:
        self._bytes -= path.stat().st_size
        path.unlink()

    def reject(self, path: Path, reason: str) -> None:
        """Keep a request the server refused for good under `rejected/`, out of the queue."""
        rejected = self.directory / "rejected"
        rejected.mkdir(exist_ok=True)
        self._bytes -= path.stat().st_size
        os.replace(path, rejected / path.name)
        (rejected / f"{path.stem}.reason").write_text(reason)
        logger.warning(
            "kfac_lab: the server refused %s (%s); kept in %s", path.name, reason, rejected
        )

    def empty(self) -> bool:
        return not self.files()

    def discard_if_done(self) -> None:
        """Remove the spool's directory once everything is sent (rejected requests stay)."""
        if self.empty() and not (self.directory / "rejected").exists():
            for leftover in self.directory.iterdir():
                leftover.unlink()
            self.directory.rmdir()


def owned_by_live_process(directory: Path) -> bool:
    """Whether the process that wrote a spool (on this host) is still running."""
    try:
        host, pid = (directory / "owner").read_text().split()
    except (OSError, ValueError):
        return False
    if host != socket.gethostname():
        return True  # a shared directory: never take another machine's spool
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
