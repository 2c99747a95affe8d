"""bench/run_all.py collects the benchmarks' output in a file of its own and never rewrites
docs/benchmarks.md (the curated record), here on a temporary copy of the docs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench import run_all

ROOT = Path(__file__).resolve().parents[2]


def test_run_all_writes_its_own_file_and_leaves_the_record_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs", ignore=shutil.ignore_patterns("*.png"))
    record = (tmp_path / "docs" / "benchmarks.md").read_bytes()
    commands = []

    def benchmark(command, **kwargs) -> subprocess.CompletedProcess:
        commands.append(command[2:])
        return subprocess.CompletedProcess(command, 0, stdout="| measure | value |\n", stderr="")

    monkeypatch.setattr(run_all, "ROOT", tmp_path)
    monkeypatch.setattr(run_all, "machine", lambda: "the test machine")  # no uname
    monkeypatch.setattr(run_all.subprocess, "run", benchmark)
    assert run_all.main(["--only", "bench_list", "kfc_vs_sgd --batch-norm", "--quick"]) == 0

    assert commands == [["bench.bench_list"], ["bench.kfc_vs_sgd", "--batch-norm", "--quick"]]
    assert (tmp_path / "docs" / "benchmarks.md").read_bytes() == record
    written = (tmp_path / "docs" / "bench" / "run_all.md").read_text()
    assert f"## {run_all.BENCHMARKS['bench_list']}\n\n`python -m bench.bench_list`" in written
    assert "`python -m bench.kfc_vs_sgd --batch-norm --quick`\n\n| measure | value |" in written
