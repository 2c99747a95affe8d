"""The training loop of one run, independent of Celery and of the database.

`train(spec, recorder, controls)` builds the model, data and optimizer from the spec with the
run's seed, trains under its `RunControls` (checkpoints, data, stop request, time limit), and
reports through a `Recorder` (worker/run_types.py): the store-backed one of the Celery task and
the console one of the CLI both plug in. It owns the three things that make a run safe to
interrupt:

- determinism: the model, the batch order (worker.zoo.datasets.BatchIterator) and K-FAC's
  sampled targets each have their own seeded generator, so on CPU a seed fixes the trajectory;
- checkpoints (worker.checkpoints) every `checkpoint_interval` steps, copied once the recorder
  has stored every point before them (`Recorder.sync`) and written atomically by a background
  thread while training goes on; a restarted run resumes
  from the latest one and continues the identical trajectory, re-sending the points after
  it, which the recorder stores idempotently per (run, name, step);
- outcomes: a non-finite loss ends the run `diverged`, an exception `failed`, `should_stop()`
  (polled a few times a second) `cancelled`, and training past `time_limit_s` (wall-clock
  time of this attempt) `failed` — always with the step and a reason. A single step longer
  than the time left is not interrupted here: the worker's monitor ends such a run
  (worker/tasks.py).

Data parallelism (`spec.world_size` > 1, worker.distributed): every rank runs this loop on its
shard of each mini-batch through a `kfac.distributed` communicator; rank 0 alone evaluates,
takes snapshots, writes checkpoints and records, and the ranks' step times are gathered into
`step_time_rank{r}` points.

Timing: `wall_time` is the cumulative time of the training steps alone; evaluation, curvature
snapshots, checkpoints and recording are left out, so time axes compare optimizers fairly. The
per-step bookkeeping is a `loss.item()` (needed for divergence detection anyway), two clock
reads and a few tuple appends; points are flushed to the recorder once a second.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from backend.run_length import batch_size_at
from backend.spec import RunSpec
from kfac.distributed import Communicator
from kfac.losses import negative_log_likelihood
from kfac.schedules import IterateAverage
from kfac.snapshot import optimizer_damping
from kfac_lab.provenance import provenance
from kfac_lab.system import SystemSampler
from worker import checkpoints, plugins
from worker.builders import StepFn
from worker.run_types import MetricPoint, Recorder, RunControls, RunResult, Status
from worker.snapshots import curvature_snapshot
from worker.zoo.datasets import BatchIterator, load_dataset
from worker.zoo.models import build_model, count_parameters

if TYPE_CHECKING:
    from worker.distributed import Rendezvous

logger = logging.getLogger(__name__)

CANCELLED_REASON = "cancelled on request"
FLUSH_SECONDS = 1.0
STOP_CHECK_SECONDS = 0.25
EVAL_CHUNK = 1000


def train(
    spec: RunSpec,
    recorder: Recorder,
    controls: RunControls | None = None,
    *,
    communicator: Communicator | None = None,
    rendezvous: Rendezvous | None = None,
) -> RunResult:
    """Run `spec` to completion (or divergence, failure, cancellation) and say how it ended.

    With `spec.world_size` > 1 and no communicator, the ranks are launched here (rank 0 in
    this process; the other nodes through `rendezvous`); with a communicator, this process is
    that rank and only rank 0 writes (and reads the checkpoint it resumes from, which it
    broadcasts to the other ranks)."""
    controls = controls or RunControls()
    if spec.world_size > 1 and communicator is None:
        from worker.distributed import train_ranks  # it imports this module

        return train_ranks(spec, recorder, controls, rendezvous)
    communicator = communicator or Communicator()
    primary = communicator.rank == 0
    checkpoint_dir = controls.checkpoint_dir if primary else None
    run: _Run | None = None
    started = time.monotonic()
    try:
        run = _Run(spec, recorder, controls.data_dir, communicator)
        run.restore(checkpoint_dir if controls.resume else None)
        if checkpoint_dir is not None and not controls.resume:
            checkpoints.clear(checkpoint_dir)
        recorder.info(run.details())
        logger.info(
            "starts on %s: %s parameters, %d steps, data: %s",
            run.device,
            f"{count_parameters(run.model):,}",
            run.total_steps,
            run.data.source,
        )
        return run.loop(checkpoint_dir, controls.should_stop, started, controls.time_limit_s)
    except Exception as error:
        logger.exception("run failed")
        step = 0
        if run is not None:
            step = run.step
            try:
                run.flush()
            except Exception:
                logger.exception("could not flush the metrics of a failed run")
        return RunResult("failed", step, f"{type(error).__name__}: {error}")


def time_limit_reason(limit_s: float, step: int) -> str:
    """Why a run that trained too long failed (KFAC_RUN_TIME_LIMIT_S)."""
    return f"time limit of {limit_s:g} s exceeded at step {step}"


def resolve_device(requested: str, rank: int = 0) -> torch.device:
    """CPU, or the GPU of this rank (ranks beyond the GPUs share them round-robin)."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device("cpu")


def build_optimizer(
    spec: RunSpec, model: nn.Module, communicator: Communicator | None = None
) -> tuple[torch.optim.Optimizer, StepFn]:
    """The optimizer of the spec and its step: (inputs, targets) -> detached mean NLL, built
    by the builder its spec names (worker/builders.py for the built-ins, or a plugin's); a run
    of several ranks passes them its communicator (a builder must accept it to train one)."""
    builder = plugins.builder("optimizer", spec.optimizer.name)
    if communicator is None or communicator.world_size == 1:
        return builder(spec, model)
    return builder(spec, model, communicator=communicator)


class _Run:
    """The state of one run in progress; `loop` is the training loop proper."""

    def __init__(
        self, spec: RunSpec, recorder: Recorder, data_dir: Path | None, communicator: Communicator
    ):
        self.spec, self.recorder, self.communicator = spec, recorder, communicator
        self.primary = communicator.rank == 0
        self.saver: checkpoints.BackgroundSaver | None = None  # set by `loop`
        self.device = resolve_device(spec.device, communicator.rank)
        dtype = getattr(torch, spec.dtype)
        self.data = load_dataset(spec.dataset, data_dir, images=spec.model.takes_images)
        self.train_x = self.data.train_x.to(self.device, dtype)
        self.test_x = self.data.test_x.to(self.device, dtype)
        if spec.loss == "cross_entropy":
            self.train_y = self.data.train_y.to(self.device)
            self.test_y = self.data.test_y.to(self.device)
        else:  # an autoencoder reconstructs its input
            self.train_y, self.test_y = self.train_x, self.test_x
        n_train = len(self.train_x)
        self.batches = BatchIterator(
            n_train, lambda k: batch_size_at(spec.batch_size, k, n_train), spec.seed
        )
        self.model = build_model(spec, device=self.device)
        self.optimizer, self.step_fn = build_optimizer(spec, self.model, communicator)
        self.average = (
            IterateAverage(self.model, spec.iterate_averaging) if spec.iterate_averaging else None
        )
        self.total_steps = spec.total_steps()
        self.step, self.wall_time, self.examples_seen = 0, 0.0, 0
        self.resumed_from: int | None = None
        self.buffer: list[MetricPoint] = []
        self.system = SystemSampler(cuda=self.device.type == "cuda")
        self.final: dict[str, float] = {}

    def details(self) -> dict[str, Any]:
        return {
            "data_source": self.data.source,
            "parameters": count_parameters(self.model),
            "device": str(self.device),
            "total_steps": self.total_steps,
            "resumed_from": self.resumed_from,
            "provenance": provenance(str(self.device)),
            "processes": self.communicator.world_size,
        }

    # -- the loop --
    def loop(
        self,
        checkpoint_dir: Path | None,
        should_stop: Callable[[], bool],
        started: float,
        time_limit_s: float | None,
    ) -> RunResult:
        spec = self.spec
        self.saver = checkpoints.BackgroundSaver(checkpoint_dir) if checkpoint_dir else None
        if self.step == 0 and spec.eval_interval and self.primary:
            self.evaluate()
        last_flush = last_stop_check = -math.inf
        while self.step < self.total_steps:
            if time.monotonic() - last_stop_check >= STOP_CHECK_SECONDS:
                last_stop_check = time.monotonic()
                if should_stop():
                    return self.finish("cancelled", CANCELLED_REASON)
                if time_limit_s is not None and last_stop_check - started > time_limit_s:
                    return self.finish("failed", time_limit_reason(time_limit_s, self.step))
            start = time.perf_counter()
            indices = self.batches.next().to(self.device)
            mine = self.communicator.shard(indices)
            loss = self.step_fn(self.train_x[mine], self.train_y[mine]).item()
            elapsed = time.perf_counter() - start
            self.step += 1
            self.wall_time += elapsed
            self.examples_seen += len(indices)
            if not math.isfinite(loss):
                logger.warning("diverged: training loss is %s at step %d", loss, self.step)
                return self.finish("diverged", f"training loss is {loss} at step {self.step}")
            if self.average is not None:
                self.average.update(self.model)
            last = self.step == self.total_steps
            if self.step % spec.metric_interval == 0 or last:
                self.record_step(loss, elapsed, len(indices))
            evaluate = spec.eval_interval and (self.step % spec.eval_interval == 0 or last)
            if self.primary and evaluate:
                self.evaluate()
            if self.primary and spec.snapshot_interval and self.step % spec.snapshot_interval == 0:
                self.recorder.snapshot(self.step, self.snapshot())
            if (
                checkpoint_dir
                and spec.checkpoint_interval
                and not last
                and (self.step % spec.checkpoint_interval == 0)
            ):
                self.flush()
                if self.recorder.sync():
                    self.saver.save(self.step, self.state_dict())
            if time.monotonic() - last_flush >= FLUSH_SECONDS:
                last_flush = time.monotonic()
                self.flush()
        return self.finish("succeeded", None)

    def finish(self, status: Status, reason: str | None) -> RunResult:
        self.flush()
        if self.saver is not None:  # a run handed back resumes from its last checkpoint
            self.saver.wait()
        return RunResult(
            status, self.step, reason, dict(self.final), self.wall_time, self.resumed_from
        )

    def flush(self) -> None:
        if self.buffer:
            points, self.buffer = self.buffer, []
            self.recorder.metrics(points)
        self.recorder.progress(self.step)

    def emit(self, name: str, value: float) -> None:
        self.buffer.append((name, self.step, self.wall_time, value))
        self.final[name] = value

    def record_step(self, loss: float, elapsed: float, batch: int) -> None:
        """Every rank calls this at the same steps (the step times are gathered)."""
        if self.communicator.world_size > 1:
            times = self.communicator.gather(elapsed)
            for rank, seconds in enumerate(times):
                self.emit(f"step_time_rank{rank}", seconds)
            self.emit("step_time_slowest_rank", max(times))
        self.emit("train_loss", loss)
        self.emit("step_time", elapsed)
        self.emit("examples_seen", float(self.examples_seen))
        if not isinstance(self.spec.batch_size, int):
            self.emit("batch_size", float(batch))
        for name, value in getattr(self.optimizer, "diagnostics", {}).items():
            if math.isfinite(value):
                self.emit(name, value)
        for name, value in self.system.sample().items():
            self.emit(name, value)

    # -- evaluation and snapshots, off the clock --
    @torch.no_grad()
    def evaluate(self) -> None:
        """Test loss (and accuracy for classifiers); with iterate averaging, also of θ̄.
        In eval mode: batch norm uses (and test data leaves alone) its running statistics."""
        training = self.model.training
        self.model.eval()
        try:
            self.evaluate_current("")
            if self.average is not None and self.average.count:
                with self.average.swap_into(self.model):  # θ̄ in the model, θ restored after
                    self.evaluate_current("_avg")
        finally:
            self.model.train(training)

    def evaluate_current(self, suffix: str) -> None:
        total_loss, correct = 0.0, 0
        for start in range(0, len(self.test_x), EVAL_CHUNK):
            x = self.test_x[start : start + EVAL_CHUNK]
            y = self.test_y[start : start + EVAL_CHUNK]
            out = self.model(x)
            total_loss += float(negative_log_likelihood(out, y, self.spec.loss).sum())
            if self.spec.loss == "cross_entropy":
                correct += int((out.argmax(1) == y).sum())
        self.emit(f"test_loss{suffix}", total_loss / len(self.test_x))
        if self.spec.loss == "cross_entropy":
            self.emit(f"test_accuracy{suffix}", correct / len(self.test_x))

    def snapshot(self) -> dict[str, Any]:
        probe = self.spec.probe
        generator = torch.Generator().manual_seed(self.spec.seed * 7919 + self.step)
        indices = torch.randperm(len(self.train_x), generator=generator)[: probe.examples]
        indices = indices.to(self.device)
        empirical = getattr(self.spec.optimizer, "fisher", "true") == "empirical"
        damping = optimizer_damping(self.optimizer, self.spec.probe.damping)
        return curvature_snapshot(
            self.model,
            self.train_x[indices],
            self.train_y[indices] if empirical else "sampled",
            self.spec,
            damping=damping,
            seed=self.spec.seed * 7919 + self.step,
        )

    # -- checkpoints --
    def state_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.model_dump(mode="json", exclude={"label"}),
            "step": self.step,
            "wall_time": self.wall_time,
            "examples_seen": self.examples_seen,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "batches": self.batches.state_dict(),
            "average": self.average.state_dict() if self.average else None,
            "final": self.final,
        }

    def restore(self, checkpoint_dir: Path | None) -> None:
        """Continue from the latest checkpoint in `checkpoint_dir` (None: none); with several
        ranks, every rank takes part and gets rank 0's state (the others pass None)."""
        several = self.communicator.world_size > 1
        state = None
        if checkpoint_dir is not None:
            # Ranks on other devices or machines load what rank 0 sends from the CPU.
            location = "cpu" if several else self.device
            state = checkpoints.load_latest(checkpoint_dir, map_location=location)
        if several:
            state = self.communicator.broadcast_object(state)
        if state is None:
            return
        if state["spec"] != self.spec.model_dump(mode="json", exclude={"label"}):
            raise ValueError(f"the checkpoint in {checkpoint_dir} belongs to another spec")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        self.step, self.wall_time = state["step"], state["wall_time"]
        self.examples_seen, self.final = state["examples_seen"], dict(state["final"])
        self.resumed_from = self.step
        logger.info("resumed from the checkpoint of step %d", self.step)
