"""Checkpoint files of a run: written atomically, read back newest first.

A checkpoint is `step-XXXXXXXX.pt` in the run's directory. It is written to a temporary file in
the same directory, flushed to disk and renamed over its final name, so a worker killed at any
moment leaves either the previous checkpoint or the new one, never half a file. The newest two
are kept: should the newest be unreadable all the same, the run resumes from the one before.
Files are loaded with `weights_only=True`: they hold only tensors, numbers, strings and
containers of them.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

KEEP = 2
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def save(directory: Path, step: int, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"step-{step:08d}.pt"
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".step-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(directory)
    for old in checkpoint_files(directory)[KEEP:]:
        old.unlink(missing_ok=True)
    return target


def checkpoint_files(directory: Path) -> list[Path]:
    """The checkpoints in `directory`, newest first."""
    if not directory.is_dir():
        return []
    files = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(files, key=lambda p: p.name, reverse=True)


def clear(directory: Path) -> None:
    """Forget a run's checkpoints (a run started afresh must not resume an older attempt)."""
    for path in checkpoint_files(directory):
        path.unlink(missing_ok=True)


def load_latest(directory: Path, map_location: torch.device | str = "cpu") -> dict | None:
    """The newest readable checkpoint's state, or None when there is none."""
    for path in checkpoint_files(directory):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except Exception:
            logger.exception("checkpoint %s is unreadable; trying an older one", path)
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
