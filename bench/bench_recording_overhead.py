"""Benchmark: what recording costs a training step (goal: <= 3% on the MNIST autoencoder).

The paper's MNIST autoencoder (784-1000-500-250-30-250-500-1000-784, backend.spec's
`AutoencoderSpec` default) on the offline MNIST digits, batch 256, trained in two ways that
alternate, so both see the same machine load (A B B A ...):

* `null`  — a recorder that drops everything, no checkpoints: the bare training loop;
* `store` — what a worker does: `StoreRecorder` writing every step's metrics to PostgreSQL in
  batches, `RunMonitor` renewing the heartbeat and polling the cancel flag, and checkpoints
  every `--checkpoint-interval` steps (100, as in the presets; each waits for the metrics
  before it to be stored, see `Recorder.sync`).

The time per step is the training loop's wall time (from the first step to the last point
stored) divided by the steps; the overhead is the median over rounds of the per-round ratio
`store / null - 1`. The same is reported for the process's CPU time (all its threads): on a
machine shared with other jobs, wall times swing with their load, CPU times much less. (The
PostgreSQL server's own work is not in this process's CPU time.) Curvature snapshots are left
out of both and timed on their own: computing one over the default probe, and storing it.

    python -m bench.bench_recording_overhead [--optimizer kfac --optimizer sgd_momentum]
        [--steps 201] [--rounds 3] [--checkpoint-interval 100] [--threads N]
        [--server postgresql+psycopg://postgres@127.0.0.1:5432/test]

Prints a Markdown section, writes docs/bench/recording_overhead.json, and exits with status 1
if a wall-clock overhead exceeds the goal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from backend.settings import get_settings
from backend.spec import RunSpec
from backend.store.db import session_scope
from backend.store.migrate import scratch_database
from backend.store.results import write_snapshot
from backend.store.writes import claim_run, create_experiment
from bench.support import add_server_option, write_results
from worker.recording import RunMonitor, StoreRecorder
from worker.run_types import MetricPoint, Recorder, RunControls
from worker.snapshots import curvature_snapshot
from worker.training import train
from worker.zoo.datasets import load_dataset
from worker.zoo.models import build_model

GOAL = 0.03
WORKER = "bench"


class NullRecorder:
    def info(self, details: dict[str, Any]) -> None: ...
    def metrics(self, points: list[MetricPoint]) -> None: ...
    def snapshot(self, step: int, payload: dict[str, Any]) -> None: ...
    def progress(self, step: int) -> None: ...
    def sync(self) -> bool:
        return True


class Clocked:
    """Wraps a recorder to time the loop: `info` is called once the setup is done."""

    def __init__(self, inner: Recorder):
        self.inner, self.started = inner, (0.0, 0.0)

    def info(self, details: dict[str, Any]) -> None:
        self.started = (time.perf_counter(), time.process_time())
        self.inner.info(details)

    def per_step(self, steps: int) -> tuple[float, float]:
        """Wall and CPU seconds per step since `info`."""
        wall, cpu = self.started
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def make_spec(optimizer: str, steps: int, checkpoint_interval: int) -> RunSpec:
    return RunSpec.model_validate(
        {
            "dataset": "digits_offline",
            "optimizer": {"name": optimizer},
            "batch_size": 256,
            "steps": steps,
            "eval_interval": None,
            "checkpoint_interval": checkpoint_interval,
            "device": "cpu",
        }
    )


def time_null(spec: RunSpec) -> tuple[float, float]:
    """Wall and CPU seconds per step of the bare loop."""
    recorder = Clocked(NullRecorder())
    result = train(spec, recorder, RunControls(data_dir=get_settings().data_dir))
    assert result.status == "succeeded", result
    return recorder.per_step(spec.total_steps())


def time_store(spec: RunSpec, url: str, run_id: str, checkpoints: Path) -> tuple[float, float]:
    """Wall and CPU seconds per step as in a worker: store recorder, heartbeat, checkpoints."""
    with session_scope(url) as session:
        claim_run(session, run_id, WORKER)
    with RunMonitor(run_id, WORKER, url, heartbeat_interval=2.0) as monitor:
        store = StoreRecorder(run_id, url, monitor)
        recorder = Clocked(store)
        result = train(
            spec,
            recorder,
            checkpoint_dir=checkpoints / run_id,
            should_stop=monitor.should_stop,
            resume=False,
            data_dir=get_settings().data_dir,
        )
        assert store.close(timeout=60) and result.status == "succeeded", result
        return recorder.per_step(spec.total_steps())


def new_runs(url: str, spec: RunSpec, count: int) -> list[str]:
    fields = {"label": "bench", "optimizer": {}, "seed": 0, "spec": spec.model_dump(mode="json")}
    with session_scope(url) as session:
        experiment = create_experiment(session, name="bench", spec={}, runs=[fields] * count)
        return [run.id for run in experiment.runs]


def time_snapshot(spec: RunSpec, url: str, run_id: str) -> tuple[float, float]:
    """Seconds to compute one curvature snapshot over the default probe, and to store it."""
    data = load_dataset(spec.dataset, get_settings().data_dir)
    model = build_model(spec, device=torch.device("cpu"))
    inputs = data.train_x[: spec.probe.examples]
    computes, stores = [], []
    for step in range(3):
        start = time.perf_counter()
        payload = curvature_snapshot(model, inputs, "sampled", spec, damping=1e-3, seed=step)
        computes.append(time.perf_counter() - start)
        start = time.perf_counter()
        with session_scope(url) as session:
            write_snapshot(session, run_id, step, **payload)
        stores.append(time.perf_counter() - start)
    return statistics.median(computes), statistics.median(stores)


def measure(optimizer: str, args: argparse.Namespace, url: str, folder: Path) -> dict:
    """Interleaved (null, store) runs of one optimizer; wall and CPU seconds per step."""
    spec = make_spec(optimizer, args.steps, args.checkpoint_interval)
    warm = make_spec(optimizer, 5, args.checkpoint_interval)
    runs = iter(new_runs(url, spec, args.rounds + 1))
    time_null(warm)  # lazy imports, caches, the dataset
    time_store(warm, url, next(runs), folder)
    null, store = [], []
    for round_ in range(args.rounds):
        for kind in ("null", "store") if round_ % 2 == 0 else ("store", "null"):
            if kind == "null":
                null.append(time_null(spec))
            else:
                store.append(time_store(spec, url, next(runs), folder))
    result = {}
    for clock, name in enumerate(("wall", "cpu")):
        ratios = [s[clock] / n[clock] - 1 for n, s in zip(null, store, strict=True)]
        result[name] = {
            "null_ms": 1e3 * statistics.median(n[clock] for n in null),
            "store_ms": 1e3 * statistics.median(s[clock] for s in store),
            "overhead": statistics.median(ratios),
            "rounds": ratios,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", action="append", choices=["kfac", "sgd_momentum", "adam"])
    parser.add_argument("--steps", type=int, default=201, help="per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="(null, store) pairs per optimizer")
    parser.add_argument("--checkpoint-interval", type=int, default=100)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_server_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, Any] = {"settings": {**vars(args), "threads": torch.get_num_threads()}}
    with (
        scratch_database(args.server, prefix="kfac_bench") as url,
        tempfile.TemporaryDirectory(prefix="kfac-bench-") as folder,
    ):
        for optimizer in args.optimizer or ["kfac", "sgd_momentum"]:
            results[optimizer] = measure(optimizer, args, url, Path(folder))
        (run_id,) = new_runs(url, make_spec("kfac", 1, 1), 1)
        compute, store = time_snapshot(make_spec("kfac", 1, 1), url, run_id)
        results["snapshot"] = {"compute_s": compute, "store_s": store}
    write_results("recording_overhead", results)
    return report(results)


def report(results: dict[str, Any]) -> int:
    """Print the Markdown section; 0 if every wall-clock overhead meets the goal."""
    settings = results["settings"]
    print(
        f"## Recording overhead: MNIST autoencoder, batch 256, {settings['steps']} steps per "
        f"run, checkpoints every {settings['checkpoint_interval']} steps, "
        f"{settings['threads']} torch threads, {settings['rounds']} interleaved rounds\n"
    )
    print("| optimizer | clock | null ms/step | store ms/step | overhead | per round |")
    print("|---|---|---|---|---|---|")
    ok = True
    for optimizer, clocks in results.items():
        if optimizer in ("settings", "snapshot"):
            continue
        for clock, r in clocks.items():
            each = ", ".join(f"{100 * x:+.1f}%" for x in r["rounds"])
            print(
                f"| {optimizer} | {clock} | {r['null_ms']:.1f} | {r['store_ms']:.1f} | "
                f"{100 * r['overhead']:+.2f}% | {each} |"
            )
        ok &= clocks["wall"]["overhead"] <= GOAL
    snapshot = results["snapshot"]
    print(
        f"\nCurvature snapshot over the default probe (not in the figures above): computed in "
        f"{snapshot['compute_s']:.2f} s, stored in {snapshot['store_s']:.3f} s.\n"
    )
    verdict = "met" if ok else "MISSED"
    print(f"Goal: recording overhead <= {100 * GOAL:.0f}% of the step time (wall): {verdict}.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
