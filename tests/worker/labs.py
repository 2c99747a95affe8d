"""A kfac-lab installation for tests that run real worker processes.

A `Lab` is one set of `KFAC_*` variables (data directory, database, broker), applied both to
this process (to create runs in the store and send their tasks with backend.queue) and to the
`kfac-lab worker` subprocesses it starts. Workers get a process group of their own, so a test
can SIGKILL a worker with its pool children, as when a machine dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from backend import queue
from backend.settings import Settings, get_settings
from backend.spec import RunSpec, queue_for
from backend.store.db import dispose_engines, session_scope
from backend.store.migrate import upgrade
from backend.store.models import MetricPoint, MetricSeries, Run, RunStatus
from backend.store.writes import create_experiment, set_task_id
from worker.checkpoints import checkpoint_files, checkpoint_path

REPO = Path(__file__).resolve().parents[2]
# How long a test waits for what a worker process does (start, train, stop): a machine at load
# ~10 trains many times slower than an idle one. Waits poll, so an idle machine waits no
# longer than the work takes; only a broken test waits this long.
WORKER_WAIT_S = 300.0
TERMINAL = {s.value for s in RunStatus if s.terminal}

TINY_RUN = {
    "dataset": "digits8x8",
    "model": {"name": "mlp", "hidden": [12]},
    "optimizer": {"name": "sgd_momentum", "lr": 0.1},
    "batch_size": 32,
    "steps": 30,
    "eval_interval": 10,
    "checkpoint_interval": 10,
    "device": "cpu",
}


def slow_steps_env() -> dict[str, str]:
    """The environment of a worker whose runs labelled `slow SECONDS from K` sleep SECONDS in
    each step from the K-th on (tests/worker/slow_steps/sitecustomize.py, first on its path)."""
    hooks = Path(__file__).resolve().parent / "slow_steps"
    path = [str(hooks), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path)}


def run_spec(**fields: Any) -> RunSpec:
    return RunSpec.model_validate({**TINY_RUN, **fields})


def assert_same_trajectory(
    curve: list[tuple[int, float]], uninterrupted: list[tuple[int, float]], steps: int
) -> None:
    """A resumed run's curve has a point at every step 1…`steps` and equals, to 1e-9, that
    of the same spec trained without interruption."""
    assert [step for step, _ in curve] == list(range(1, steps + 1))
    for (_, ours), (_, theirs) in zip(curve, uninterrupted, strict=True):
        assert ours == pytest.approx(theirs, rel=1e-9)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = WORKER_WAIT_S) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.text():
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the worker did not get ready:\n{self.text()[-3000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once."""
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """A warm shutdown (SIGTERM to the main process), then SIGKILL if it hangs."""
        if self.process.poll() is None:
            self.process.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        code = self.process.poll()
        self.kill()
        return code if code is not None else -9


@dataclass
class Lab:
    env: dict[str, str]
    home: Path
    workers: list[Worker] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return get_settings()

    @property
    def url(self) -> str:
        return self.settings.database_url

    # -- runs --
    def create(self, *specs: RunSpec, name: str = "test") -> list[str]:
        """Store an experiment with these runs, all queued; returns the run ids in order."""
        runs = [
            {
                "label": spec.display_label(),
                "optimizer": spec.optimizer.model_dump(mode="json"),
                "seed": spec.seed,
                "spec": spec.model_dump(mode="json"),
                "total_steps": spec.total_steps(),
            }
            for spec in specs
        ]
        with session_scope(self.url) as session:
            experiment = create_experiment(session, name=name, spec={}, runs=runs)
            return [run.id for run in experiment.runs]

    def send(self, *run_ids: str) -> list[str]:
        """Send each run's task as the API does; returns the task ids."""
        task_ids = []
        for run_id in run_ids:
            spec = RunSpec.model_validate(self.run(run_id).spec)
            task_id = queue.send_run(run_id, queue_for(spec))
            with session_scope(self.url) as session:
                set_task_id(session, run_id, task_id)
            task_ids.append(task_id)
        return task_ids

    def run(self, run_id: str) -> Run:
        with session_scope(self.url) as session:
            return session.get(Run, run_id)

    def wait(self, *run_ids: str, until=TERMINAL, timeout: float = WORKER_WAIT_S) -> list[Run]:
        """Poll the store until every run's status is in `until`."""
        deadline = time.monotonic() + timeout
        while True:
            runs = [self.run(run_id) for run_id in run_ids]
            if all(run.status in until for run in runs):
                return runs
            if time.monotonic() > deadline:
                states = [(r.id, r.status, r.step, r.error) for r in runs]
                raise TimeoutError(f"runs {states} not in {until}:\n{self.logs()}")
            time.sleep(0.05)

    def wait_for(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """`wait_for`, failing with the workers' logs (what they were doing instead)."""
        try:
            wait_for(condition, timeout, what)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}:\n{self.logs()}") from None

    def logs(self) -> str:
        """The end of every worker's log, for a failure message."""
        return "\n".join(f"--- {w.log.name}\n{w.text()[-3000:]}" for w in self.workers)

    def points(self, run_id: str, name: str = "train_loss") -> list[tuple[int, float]]:
        """A run's stored points of one metric, as (step, value) in step order."""
        with session_scope(self.url) as session:
            return [
                tuple(row)
                for row in session.execute(
                    select(MetricPoint.step, MetricPoint.value)
                    .join(MetricSeries, MetricSeries.id == MetricPoint.series_id)
                    .where(MetricSeries.run_id == run_id, MetricSeries.name == name)
                    .order_by(MetricPoint.step)
                )
            ]

    # -- checkpoints --
    def checkpoints(self, run_id: str) -> list[Path]:
        """The run's checkpoints on disk, newest first."""
        return checkpoint_files(self.settings.artifacts_dir / run_id)

    def wait_for_checkpoint(self, run_id: str, step: int) -> None:
        """Until the run's checkpoint of `step` is written."""
        path = checkpoint_path(self.settings.artifacts_dir / run_id, step)
        self.wait_for(path.exists, WORKER_WAIT_S, f"the checkpoint of step {step}")

    def wait_for_no_checkpoints(self, *run_ids: str) -> None:
        """Until every run's directory is gone: a run's end is stored first and its
        checkpoints removed after (were the write to fail, it would resume from them), so a
        moment after its status, on a busy machine."""
        directories = [self.settings.artifacts_dir / run_id for run_id in run_ids]
        self.wait_for(
            lambda: not any(d.exists() for d in directories), WORKER_WAIT_S, "the checkpoints to go"
        )

    # -- workers --
    def start_worker(self, wait: bool = True, **env: str) -> Worker:
        log = self.home / f"worker-{len(self.workers)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker", "--loglevel=INFO"],
            cwd=REPO,
            env={**self.env, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = Worker(process, log)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker


@contextmanager
def lab(home: Path, **variables: str) -> Iterator[Lab]:
    """A lab in `home` with these KFAC_* variables, migrated; workers are killed at the end."""
    home.mkdir(parents=True, exist_ok=True)
    kfac = {"KFAC_HOME": str(home), **variables}
    others = {k: v for k, v in os.environ.items() if not k.startswith("KFAC_")}
    env = {**others, **kfac, "PYTHONUNBUFFERED": "1"}
    with kfac_environment(kfac):
        the_lab = Lab(env, home)
        try:
            upgrade(the_lab.url)
            yield the_lab
        finally:
            for worker in the_lab.workers:
                worker.kill()  # quicker than a warm shutdown, which the tests check themselves
            dispose_engines()


@contextmanager
def kfac_environment(variables: dict[str, str]) -> Iterator[None]:
    """Exactly these KFAC_* variables in this process (settings and Celery app re-read)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("KFAC_")}
    try:
        for name in saved:
            del os.environ[name]
        os.environ.update(variables)
        _reset_caches()
        yield
    finally:
        for name in variables:
            os.environ.pop(name, None)
        os.environ.update(saved)
        _reset_caches()


def _reset_caches() -> None:
    get_settings.cache_clear()
    queue.celery_app.cache_clear()
