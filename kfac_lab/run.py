"""A tracked run: what a training script holds between `kfac_lab.init` and `finish`.

Nothing here raises into the training loop: every method catches its own errors and logs
them on the `kfac_lab` logger (bad arguments included), because losing a metric is better than
losing a day of training. The one exception is `init`, which refuses a missing server URL
before training starts.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import socket
import time
import traceback
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

from backend.tracking_protocol import (
    LEVEL,
    MAX_LINE_CHARS,
    METRIC_NAME,
    RUNS_PATH,
    as_step,
    run_path,
)
from kfac_lab.provenance import provenance
from kfac_lab.sender import Connection, LogLine, Request, Sender
from kfac_lab.spool import Spool, default_root

logger = logging.getLogger("kfac_lab")

FINISH_TIMEOUT_S = 60.0
SNAPSHOT_PROBE = 1024  # parameters kept by a snapshot's dense matrices (evenly spaced units)


def init(
    experiment: str,
    label: str = "run",
    config: dict[str, Any] | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    seed: int = 0,
    total_steps: int | None = None,
    spool_dir: str | Path | None = None,
) -> Run:
    """Start a run in the experiment named `experiment` (created on the server if new; runs of
    one name are grouped on one page) and return it.

    `url` and `token` default to `KFAC_LAB_URL` and `KFAC_LAB_TOKEN` (the admin token that
    `kfac-lab serve` prints). The server need not be reachable now: records wait on disk under
    `spool_dir` (default `KFAC_LAB_SPOOL`, else ~/.cache/kfac-lab/spool) until it is.
    `config["optimizer"]` (a name or `{"name": ..., ...}`) names the optimizer on the page.
    """
    connection = Connection.configured(url, token)
    run_id = uuid.uuid4().hex
    spool = Spool(Path(spool_dir or default_root()) / run_id)
    sender = Sender(run_id, spool, connection)
    body = {
        "id": run_id,
        "experiment": experiment,
        "label": label,
        "config": _plain_json(config or {}),
        "seed": seed,
        "total_steps": total_steps,
        "client": f"{socket.gethostname()}:{os.getpid()}"[:150],
        "provenance": provenance(),
    }
    sender.queue.append(Request(RUNS_PATH, body))
    return Run(run_id, sender.start())


class Run:
    """Log metrics and curvature snapshots of one run; end it with `finish` or `fail`, or use
    it as a context manager (an exception ends it `failed` with the traceback)."""

    def __init__(self, run_id: str, sender: Sender):
        self.id = run_id
        self._sender = sender
        self._queue = sender.queue
        self._start = sender.started
        self._last_step = 0
        self._final: dict[str, float] = {}
        self._watched: Any = None
        self._ended = False
        self._log_seq = itertools.count()

    # -- the hot path --
    def log(self, step: int, **metrics: Any) -> None:
        """Record `metrics` (numbers) at `step`; a (name, step) already recorded keeps its first
        value. About a microsecond: the values are appended to a queue that a background thread
        turns into batches; with a watched optimizer its `diagnostics` are logged too."""
        try:
            if self._watched is not None:
                metrics.update(self._watched.diagnostics)
            self._queue.append((step, time.perf_counter() - self._start, metrics))
            self._last_step = step
            self._final.update(metrics)
        except Exception:  # noqa: BLE001 - never into the training loop
            logger.exception("kfac_lab: log failed")

    def log_text(self, line: str, level: str = "INFO") -> None:
        """Add `line` to the run's log on its page (`level`: INFO, WARNING, ERROR, ...). Queued
        like `log` and sent in batches."""
        try:
            text = str(line).replace("\x00", "")[:MAX_LINE_CHARS]
            tag = level.upper() if LEVEL.fullmatch(level.upper()) else "INFO"
            self._queue.append(LogLine(next(self._log_seq), time.time(), tag, text))
        except Exception:  # noqa: BLE001 - never into the training loop
            logger.exception("kfac_lab: log_text failed")

    def watch(self, optimizer: Any) -> None:
        """Log `optimizer.diagnostics` (a `kfac.KFAC`'s λ, α, μ, ...) with every `log`."""
        self._watched = optimizer if hasattr(optimizer, "diagnostics") else None

    @property
    def cancel_requested(self) -> bool:
        """True once someone pressed cancel on the run's page (the script decides what to do)."""
        return self._sender.cancel_requested

    @property
    def closed_by_server(self) -> str | None:
        """None while the lab takes this run's records; once it has ended the run itself (it
        heard nothing from the script for its `KFAC_TRACKING_TIMEOUT_S`, e.g. the machine
        slept), the server's reason. Records are then dropped and `finish` returns False."""
        return self._sender.closed_by_server

    # -- snapshots --
    def snapshot(
        self,
        model: Any,
        inputs: Any,
        targets: Any,
        loss: str = "cross_entropy",
        optimizer: Any = None,
        *,
        step: int | None = None,
        layers: list[str] | None = None,
        probe: int | dict[str, tuple] | None = SNAPSHOT_PROBE,
        damping: float = 1e-3,
    ) -> None:
        """Record the curvature matrices F, F̃, (F̃ + λI)⁻¹, F̌⁻¹, F̂⁻¹ of `model` on this batch
        (`kfac.snapshot.snapshot_payload`, as the lab's workers do) at `step` (default: the
        last logged step). `targets` is a tensor (empirical Fisher) or "sampled" (true Fisher).
        With a `kfac.KFAC` as `optimizer`, the inverses use its current λ + η (the ones it
        applies) and its `diagnostics` are logged at that step; otherwise λ = `damping`.
        Computed now, in this thread (it costs per-example gradients over `probe` parameters);
        sent in the background."""
        try:
            from kfac_lab.snapshots import snapshot_body

            step = as_step(self._last_step if step is None else step) or 0
            body = snapshot_body(
                model,
                inputs,
                targets,
                loss,
                optimizer,
                step=step,
                layers=layers,
                probe=probe,
                damping=damping,
            )
            if optimizer is not None and hasattr(optimizer, "diagnostics"):
                self._queue.append(
                    (step, time.perf_counter() - self._start, dict(optimizer.diagnostics))
                )
            self._queue.append(Request(run_path(self.id, "snapshots"), body))
        except Exception:  # noqa: BLE001 - never into the training loop
            logger.exception("kfac_lab: snapshot failed")

    def record_snapshot(self, step: int, payload: dict[str, Any]) -> None:
        """Record a snapshot made already by `kfac.snapshot.snapshot_payload` (as `kfac-lab
        run` does with its workers' snapshot code) at `step`."""
        try:
            from kfac_lab.snapshots import payload_body

            self._queue.append(Request(run_path(self.id, "snapshots"), payload_body(payload, step)))
        except Exception:  # noqa: BLE001 - never into the training loop
            logger.exception("kfac_lab: snapshot failed")

    # -- the end --
    def finish(self, timeout: float = FINISH_TIMEOUT_S) -> bool:
        """End the run `succeeded`, after sending everything; True if the server has it all
        (otherwise it waits on disk for `kfac_lab.sync()`)."""
        return self.end("succeeded", timeout=timeout)

    def fail(self, reason: str, timeout: float = FINISH_TIMEOUT_S) -> bool:
        """End the run `failed` with `reason` (shown on its page)."""
        return self.end("failed", reason, timeout=timeout)

    def end(
        self, status: str, reason: str | None = None, *, timeout: float = FINISH_TIMEOUT_S
    ) -> bool:
        """End the run with `status` (succeeded, failed, diverged or cancelled) and `reason`;
        the first end counts. Sends everything first, as `finish` does."""
        if self._ended:
            return False
        self._ended = True
        try:
            final = {
                name: float(value)
                for name, value in self._final.items()
                if METRIC_NAME.fullmatch(name) and _finite_number(value)
            }
            body = {"status": status, "step": as_step(self._last_step) or 0, "final_metrics": final}
            if reason is not None:
                body["error"] = str(reason).replace("\x00", "")[:20_000]
            self._queue.append(Request(run_path(self.id, "end"), body))
            return self._sender.close(timeout)
        except Exception:  # noqa: BLE001 - never into the training loop
            logger.exception("kfac_lab: ending the run failed")
            return False

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if error is None:
            self.finish()
        else:
            trace_text = "".join(traceback.format_exception(kind, error, trace)).strip()
            self.log_text(trace_text, "ERROR")
            self.fail(trace_text)


def _plain_json(config: dict[str, Any]) -> Any:
    """`config` as the server takes it: objects it cannot encode as their `str`, NaN and
    infinities as null (JSON has neither)."""
    return json.loads(json.dumps(config, default=str), parse_constant=lambda _: None)


def _finite_number(value: Any) -> bool:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return number - number == 0  # False for NaN and ±inf
