"""The schema of the experiment store: SQLAlchemy 2 declarative models, one place for all tables.

Tables, and why they look the way they do:

* `experiments` and `runs` — what was asked for and where each run is. A run keeps its full spec
  (JSON, the pydantic run spec dumped by the API) so a worker needs nothing else to start it.
* `metric_series` + `metric_points` — one series per (run, metric name) and narrow point rows
  keyed by (series_id, step). Keeping the name out of the point rows keeps them small (a run may
  log 1,000,000 points per metric), and the primary key makes a point at a given step unique, so
  writes are idempotent (`INSERT ... ON CONFLICT DO NOTHING`).
* `metric_rollups` — a pyramid of min/max-preserving summaries of each series, maintained on
  write, so that reading any series downsampled to a few thousand points is an indexed range
  read of at most that many rows, however long the series is (see `ROLLUP_BASE`).
* `snapshots` — curvature matrices, float32, compressed, pooled to at most 512 x 512.
* tracked runs (`runs.tracked`) come from users' own training scripts through the `kfac_lab`
  client; their experiments are found by `tracking_name`.
* `run_logs` — each run's log lines (its worker's log records, a failure's traceback, lines
  sent by the tracking client), numbered per run by the writer so a retried batch is written
  once; the primary key (run_id, seq) is the index per run; the last MAX_LOG_LINES are kept.
* `experiment_tags` — an experiment's tags, one row each, indexed by tag for the list's search;
  an experiment's `notes` (Markdown) and `archived_at` live on its row, and the list's sorts
  and searches have indexes (`archived_at` with each sorted column, `preset`,
  `runs.optimizer_name`, and one over each run's experiment, step, total steps and
  `final_train_loss`).
* `workers` — each worker's queues and heartbeat, so a run can tell nobody consumes its queue.
* `share_links`, `app_secrets` — read-only links (token hashes only) and the embedded admin token.
* `events` — an append-only log per experiment that the API's live stream reads by id, so a page
  that reconnects with `Last-Event-ID` gets exactly what it missed.

The declarative base, its naming convention and the column types are in `backend.store.base`.
The schema is created only by the Alembic migrations in `migrations/`; a test checks that they
and these models agree on PostgreSQL and SQLite.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from backend.store.base import Base, EventId, UTCDateTime, new_id, utcnow

# The pyramid of metric rollups: level k summarises aligned windows of ROLLUP_BASE * 2**k steps
# (bucket = step // width). Each rollup row keeps the first, lowest, highest and last
# point of its window, so any level is a min/max-preserving downsampling with up to 4 points
# per window. Level ROLLUP_LEVELS - 1 has windows of 16 * 2**19 = 8.4M steps, more than a run
# may take; steps beyond simply fall into more windows of the top level.
ROLLUP_BASE = 16
ROLLUP_LEVELS = 20


class RunStatus(StrEnum):
    """Life cycle of a run: queued -> running -> one of the terminal states."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DIVERGED = "diverged"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (RunStatus.QUEUED, RunStatus.RUNNING)


class Experiment(Base):
    __tablename__ = "experiments"
    # The list hides archived experiments by default and sorts what is left: an index per sort
    # that starts with `archived_at` reads a page in order, without sorting every row first.
    __table_args__ = tuple(
        Index(f"ix_experiments_archived_at_{column}", "archived_at", column)
        for column in ("created_at", "name", "status", "preset")
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), index=True)
    preset: Mapped[str | None] = mapped_column(String(64), index=True)
    # Set (to `name`) only for experiments that tracked runs join by name; unique, so scripts
    # starting at once on several machines find one experiment (see backend.store.tracking).
    tracking_name: Mapped[str | None] = mapped_column(String(200), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Derived from the runs' statuses (see `experiment_status`), stored so lists can filter on it.
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    notes: Mapped[str] = mapped_column(Text, default="", server_default="")  # Markdown
    # Set when archived: the list hides it unless asked (backend.store.listing).
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    runs: Mapped[list[Run]] = relationship(
        back_populates="experiment",
        order_by="Run.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    tag_rows: Mapped[list[ExperimentTag]] = relationship(
        order_by="ExperimentTag.tag",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class ExperimentTag(Base):
    """One tag of one experiment (lower case, see backend.api.page_schemas.Tag)."""

    __tablename__ = "experiment_tags"
    __table_args__ = (Index("ix_experiment_tags_tag_experiment_id", "tag", "experiment_id"),)

    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(32), primary_key=True)


def _optimizer_name(context: Any) -> str | None:
    """A new run's optimizer name, copied out of its `optimizer` JSON so that the list can
    search experiments by optimizer through an index."""
    optimizer = context.get_current_parameters().get("optimizer")
    return optimizer.get("name") if isinstance(optimizer, dict) else None


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'diverged', 'cancelled')",
            name="status",
        ),
        Index("ix_runs_optimizer_name_experiment_id", "optimizer_name", "experiment_id"),
        # Covers the list's per-experiment figures (runs, progress, best final loss), so its
        # sorts by them read this index, not the rows with their specs (backend.store.listing).
        Index(
            "ix_runs_experiment_id_figures",
            "experiment_id",
            "step",
            "total_steps",
            "final_train_loss",
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)  # order within the experiment
    label: Mapped[str] = mapped_column(String(200))
    optimizer: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"name": ..., hyper-parameters}
    optimizer_name: Mapped[str | None] = mapped_column(String(64), default=_optimizer_name)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the full run spec
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.QUEUED, index=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    data_source: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Reported by a user's own script (kfac_lab): no worker trains it, nothing re-queues it.
    tracked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    worker_id: Mapped[str | None] = mapped_column(String(200))
    celery_task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # A new id at each claim (an attempt handed back is claimed again under the same number):
    # a run's other nodes are invited to this claim and to no later one (worker/nodes.py).
    claim_id: Mapped[str | None] = mapped_column(String(32))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    final_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # final_metrics["train_loss"] when a number, as a column the list's index can hold.
    final_train_loss: Mapped[float | None] = mapped_column(Float)
    # {"memory_bytes", "step_seconds", "run_seconds"} when queued (backend/estimate.py)
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Versions, git commit, host and device where it ran (kfac_lab.provenance).
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    experiment: Mapped[Experiment] = relationship(back_populates="runs")


class MetricSeries(Base):
    """One metric of one run, with running totals that let reads pick a rollup level quickly."""

    __tablename__ = "metric_series"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    n_points: Mapped[int] = mapped_column(Integer, default=0)
    step_min: Mapped[int | None] = mapped_column(Integer)
    step_max: Mapped[int | None] = mapped_column(Integer)


class MetricPoint(Base):
    """One value of a series; (series_id, step) is the primary key, so a step is written once.

    `wall_time` is seconds as the worker records them (elapsed since the run started), assumed
    to grow with the step.
    """

    __tablename__ = "metric_points"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("metric_series.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    wall_time: Mapped[float] = mapped_column(Float)
    value: Mapped[float] = mapped_column(Float)


class MetricRollup(Base):
    """The first, lowest, highest and last point of one window of a series at one level."""

    __tablename__ = "metric_rollups"

    series_id: Mapped[int] = mapped_column(
        ForeignKey("metric_series.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # step // (BASE << level)
    first_step: Mapped[int] = mapped_column(Integer)
    first_time: Mapped[float] = mapped_column(Float)
    first_value: Mapped[float] = mapped_column(Float)
    low_step: Mapped[int] = mapped_column(Integer)
    low_time: Mapped[float] = mapped_column(Float)
    low_value: Mapped[float] = mapped_column(Float)
    high_step: Mapped[int] = mapped_column(Integer)
    high_time: Mapped[float] = mapped_column(Float)
    high_value: Mapped[float] = mapped_column(Float)
    last_step: Mapped[int] = mapped_column(Integer)
    last_time: Mapped[float] = mapped_column(Float)
    last_value: Mapped[float] = mapped_column(Float)


class Snapshot(Base):
    """Curvature matrices of one run at one step.

    `payload` is an `.npz` archive (deflate) of float32 matrices; `meta` describes each one
    (shape, pooling factor, original size) so lists never have to open the payload.
    """

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    blocks: Mapped[list[list[int]]] = mapped_column(JSON)  # [[start, stop], ...] of parameters
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    spectra: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    relative_errors: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    block_averages: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    extras: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RunLogLine(Base):
    """One log line of a run; `seq` numbers a run's lines from 0 in the order they were
    written (the writer assigns it, so a batch sent twice inserts nothing the second time)."""

    __tablename__ = "run_logs"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(UTCDateTime)
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)


class ShareLink(Base):
    """A read-only link to one experiment; only the SHA-256 of its token is stored."""

    __tablename__ = "share_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a request last came with the token (to the minute: see access.use_share_token).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Event(Base):
    """One entry of an experiment's append-only event log (metrics, status, snapshot, logs)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_experiment_id_id", "experiment_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    experiment_id: Mapped[str] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A worker process, the queues it consumes and its heartbeat (renewed by its recovery
    pass): a queue no worker has beaten for within the heartbeat timeout has nobody on it."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # host:pid
    queues: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AppSecret(Base):
    """Small named secrets kept with the data, e.g. the embedded mode's generated admin token."""

    __tablename__ = "app_secrets"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def experiment_status(run_statuses: list[str]) -> str:
    """An experiment's status from its runs' statuses.

    queued while nothing has started; running while any run is still to finish and something
    has started; once all are finished: failed if any failed, else cancelled if any was
    cancelled, else succeeded (a diverged run is a result, not a failure of the experiment).
    """
    statuses = set(run_statuses)
    if not statuses or statuses == {RunStatus.QUEUED}:
        return RunStatus.QUEUED
    if statuses & {RunStatus.QUEUED, RunStatus.RUNNING}:
        return RunStatus.RUNNING
    for status in (RunStatus.FAILED, RunStatus.CANCELLED):
        if status in statuses:
            return status
    return RunStatus.SUCCEEDED
