"""The JSON shapes of the measured data the pages draw: metrics, aggregates over seeds,
comparisons and curvature snapshots (the experiments' and runs' own shapes, and the requests,
are in `backend.api.schemas`; the same rule holds: fields may be added, never renamed or
dropped).

Large numeric answers (metrics, aggregates, snapshot matrices) are serialised without running
them through these models (see `backend.api.cache.cached_json`): the models still document
them, but validating 80,000 floats per request would cost more than reading them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.api.schemas import OptimizerInfo

# --- metrics -------------------------------------------------------------------------------


class Series(BaseModel):
    x: list[float] = Field(description="steps (integers) or wall-clock seconds")
    y: list[float]


class RunMetrics(BaseModel):
    run_id: str
    series: dict[str, Series]


class ExperimentMetrics(BaseModel):
    experiment_id: str
    last_event_id: int
    runs: list[RunMetrics] = Field(description="In the experiment's run order")


class AggregateGroup(BaseModel):
    """Runs that differ only in their seed, summarised step by step."""

    key: str = Field(description="Stable id of the group (hash of the shared spec)")
    label: str
    colour: str = Field(description="The comparison's colour of the group (#RRGGBB)")
    config: dict[str, Any] = Field(description="The swept values (or the differing settings)")
    optimizer: OptimizerInfo
    seeds: int = Field(description="Runs in the group; where `n` is smaller, fewer seeds count")
    run_ids: list[str] = Field(description="The group's runs that have the metric")
    step: list[int]
    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    n: list[int] = Field(description="How many runs have a value at each step")


class Aggregate(BaseModel):
    experiment_id: str
    name: str
    groups: list[AggregateGroup]


# --- comparison ----------------------------------------------------------------------------


class Statistic(BaseModel):
    """A quantity over the runs of a group (see `backend.comparison`)."""

    mean: float | None
    sd: float | None = Field(description="Sample standard deviation (n − 1); None for n < 2")
    ci95: float | None = Field(description="Student-t 95% half-width; None for n < 2")
    n: int = Field(description="How many runs contributed")


class OutcomeStatistic(Statistic):
    excluded: int = Field(description="Runs left out: diverged, failed, or without the metric")


class TargetStatistic(Statistic):
    never: int = Field(description="Runs that have not reached the target (counted, not dropped)")
    running: int = Field(description="Of those, runs still queued or running")


class SeedCount(BaseModel):
    count: int
    finished: int = Field(description="Runs that have ended (any final status)")


class ComparisonGroup(BaseModel):
    """One optimizer configuration: the runs that differ only by seed."""

    key: str = Field(description="Stable id of the group (hash of the shared spec)")
    experiment_id: str
    optimizer: str
    config: dict[str, Any] = Field(description="The swept values (or the differing settings)")
    label: str
    colour: str = Field(description="#RRGGBB: the optimizer's hue, shaded within a sweep")
    runs: list[str]
    seeds: SeedCount
    final: OutcomeStatistic
    best: OutcomeStatistic
    steps_to_target: TargetStatistic
    seconds_to_target: TargetStatistic
    examples_to_target: TargetStatistic
    step_time_ms: float | None = Field(description="Median training step, ms")
    best_of_optimizer: bool = Field(description="Wins its optimizer's sweep by the criterion")


class Comparison(BaseModel):
    metric: str
    target: float | None = Field(description="As given, or the best final mean of the baselines")
    criterion: Literal["final", "best"]
    groups: list[ComparisonGroup]
    last_event_id: int | None = Field(
        None,
        description="One experiment's comparison: its newest event id when this was read; a "
        "live stream from it misses nothing this answer lacks",
    )


# --- snapshots -----------------------------------------------------------------------------


class SnapshotSummary(BaseModel):
    id: int
    run_id: str
    step: int
    kinds: list[str]
    shapes: dict[str, list[int]]
    created_at: datetime


class EncodedMatrix(BaseModel):
    """A matrix as its float32 bytes (`GET /api/snapshots/{id}?encoding=base64`).

    Decoding: base64 → bytes → `shape[0] * shape[1]` little-endian float32 values, row-major
    (numpy: `np.frombuffer(b64decode(data), "<f4").reshape(shape)`; JavaScript:
    `new Float32Array(bytes.buffer)`). Values are exactly the stored ones; NaN and ±Inf are
    kept (the nested-list form writes them as null).
    """

    dtype: Literal["float32"]
    shape: list[int] = Field(description="[rows, columns]")
    data: str = Field(description="base64 of the little-endian float32 values, row-major")


class SnapshotOut(BaseModel):
    id: int
    run_id: str
    step: int
    blocks: list[list[float]] = Field(description="Layer boundaries in matrix coordinates")
    parameter_blocks: list[list[int]] = Field(description="Layer boundaries in parameters")
    pool: int = Field(description="Parameters averaged into one matrix cell (per side)")
    matrices: dict[str, list[list[float | None]] | EncodedMatrix] = Field(
        description="exact, kronecker, kronecker_inverse, block_diagonal_inverse, "
        "block_tridiagonal_inverse, ...: 2-D arrays ready for a Plotly heatmap (the default, "
        "`encoding=json`), or with `encoding=base64` each an EncodedMatrix: half the bytes"
    )
    meta: dict[str, Any]
    spectra: dict[str, Any] | None
    relative_errors: dict[str, Any] | None
    block_averages: dict[str, Any] | None
    extras: dict[str, Any] | None
    created_at: datetime
