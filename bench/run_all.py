"""Run every benchmark and collect what they printed in docs/bench/run_all.md.

Each benchmark is its own module that prints a Markdown section (tables of ratios and
percentiles measured side by side in one process) and writes its JSON and plots under
docs/bench/.  This runs them one after another in fresh processes, so that none warms up or
slows down another, and puts their output under a header naming the machine.

It writes a file of its own and never docs/benchmarks.md: that is the curated record (each
section with its command, its load and what the figures mean against the goals, kept by hand
from outputs like this one), and a regenerated file would drop everything written there since.

    python -m bench.run_all [--quick] [--only NAME ...] [--output PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = {
    "kfac_vs_sgd": "K-FAC vs SGD-momentum and Adam on the MNIST autoencoder (issue 1)",
    "kfc_vs_sgd": "KFC and KFC-pre on the offline conv task (issue 5)",
    "kfc_vs_sgd --batch-norm": "KFC and KFC-pre on the offline conv task with BatchNorm (issue 5)",
    "bench_metric_read": "Reading a 1,000,000-point metric downsampled (issue 2)",
    "bench_ingest": "Metric ingest into PostgreSQL, points per second (issue 6)",
    "bench_recording_overhead": "Cost of recording metrics and checkpoints (issue 2)",
    "bench_api": "API page data, memory and live-event latency (issue 3)",
    "bench_load": "50 viewers on an experiment while 4 runs train (issue 6)",
    "bench_page": "The experiment page in a browser: load, live updates, snapshots (issue 4)",
    "bench_tracking": "What `kfac_lab` run.log costs a training loop (issue 9)",
    "bench_comparison": "The comparison of 100 runs: 5 optimizers × 5 lrs × 4 seeds (issue 8)",
    "bench_distributed": "Data-parallel K-FAC: 2 processes against 1 process × 2 threads "
    "(issue 12)",
    "bench_nodes": "Data-parallel K-FAC: traffic by world size and width, a run over two nodes "
    "(issue 12)",
    "bench_list": "The experiments list with 10,000 experiments (issue 15)",
    "bench_list_page": "The experiments list page with 10,000 experiments in Chromium (issue 15)",
    "kfac_step_cost --profile": "The default K-FAC step's cost and its parts (issue 16)",
}
"""Key: a benchmark's command line (its module in bench/, then its arguments); value: the
heading of its section."""
QUICK_FLAG = {"kfac_vs_sgd", "kfc_vs_sgd"}
"""The modules that take --quick."""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS))
    parser.add_argument("--output", type=Path, help="default: docs/bench/run_all.md")
    args = parser.parse_args(argv)
    chosen = args.only or list(BENCHMARKS)
    sections, failed = [], []
    for name in chosen:
        module, *arguments = name.split()
        if args.quick and module in QUICK_FLAG:
            arguments.append("--quick")
        command = [sys.executable, "-m", f"bench.{module}", *arguments]
        print(f"== {name}", flush=True)
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        print(result.stdout)
        if result.returncode != 0:
            failed.append(name)
            print(result.stderr[-2000:], file=sys.stderr)
        sections.append(
            f"## {BENCHMARKS[name]}\n\n`python -m bench.{' '.join([module, *arguments])}`\n\n"
            f"{result.stdout.strip()}\n"
        )
    today = datetime.date.today().isoformat()
    header = (
        f"# Benchmarks, as run\n\nWritten by `python -m bench.run_all` on {today}, on "
        f"{machine()}.\nEvery figure is a ratio or a percentile measured side by side in one "
        "run; docs/benchmarks.md\nkeeps the curated record and what the figures mean against "
        "the goals.\n"
    )
    output = args.output or ROOT / "docs" / "bench" / "run_all.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join([header, *sections]))
    print(f"wrote {output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
