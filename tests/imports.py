"""What importing some modules drags in, asked of a fresh interpreter (the test process has
imported everything already): the rooms' import rules of DESIGN.md, checked where they hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_after(modules: list[str], watched: list[str]) -> list[str]:
    """Which of the `watched` modules a fresh interpreter holds after importing `modules` from
    this checkout (with KFAC_HOME pointing nowhere: importing must not need a home)."""
    code = (
        f"import sys, {', '.join(modules)}\n"
        f"print(','.join(m for m in {tuple(watched)!r} if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KFAC_HOME": "/nonexistent/kfac-lab"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return [name for name in done.stdout.strip().split(",") if name]
