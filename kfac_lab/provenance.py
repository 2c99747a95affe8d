"""Where a run ran: versions, the code's git commit, the machine and the device.

One function for both kinds of run: a worker records it when a run starts (worker/training.py)
and the tracking client sends it with a new run (`kfac_lab.init`). Only the standard library
is imported; torch's versions are read when torch is loaded already (it always is on a worker
and in a script that trains with it), so the client still imports no torch for this.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

GROUPS = ("kfac_lab.models", "kfac_lab.datasets", "kfac_lab.optimizers")
GIT_TIMEOUT_S = 5.0


def provenance(device: str | None = None) -> dict[str, Any]:
    """kfac-lab's version and git commit (when the code is a checkout), Python, torch and CUDA
    versions, host, platform, `device`, and the version of every installed plugin package."""
    torch = sys.modules.get("torch")
    return {
        "kfac_lab": _version("kfac-lab"),
        "git_commit": git_commit(Path(__file__).resolve().parent.parent),
        "python": platform.python_version(),
        "torch": getattr(torch, "__version__", None),
        "cuda": getattr(getattr(torch, "version", None), "cuda", None),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": device,
        "plugins": plugin_versions(),
    }


def plugin_versions() -> dict[str, str]:
    """{package: version} of the installed packages other than kfac-lab that register models,
    datasets or optimizers."""
    found = {}
    for group in GROUPS:
        for point in metadata.entry_points(group=group):
            if point.dist is not None and point.dist.name != "kfac-lab":
                found[point.dist.name] = point.dist.version
    return dict(sorted(found.items()))


def git_commit(directory: Path) -> str | None:
    """The commit checked out at `directory` (with "+dirty" for local changes), or None when it
    is not a git checkout or git is missing."""
    try:
        commit = _git(directory, "rev-parse", "HEAD")
        dirty = _git(directory, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def _git(directory: Path, *arguments: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(directory), *arguments],
        capture_output=True,
        text=True,
        timeout=GIT_TIMEOUT_S,
        check=True,
    )
    return result.stdout.strip()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
