"""The JSON shapes of the HTTP API, as pydantic models, so that `/openapi.json` documents every
request and response (and schemathesis can check the answers against it).

The shapes clients rely on are fixed in DESIGN.md ("HTTP API"); the models here may add fields
but never rename or drop one. Models are built from the store's ORM objects by the small
`from_*` constructors, which is the one place where a column becomes a field.

The shapes of the measured data the pages draw (metrics, aggregates, comparisons, snapshots)
are in `backend.api.data_schemas`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from backend.presets import OVERRIDE_KEYS, PRESETS
from backend.spec import ExperimentSpec
from backend.store.models import Experiment, Run
from backend.store.queueing import status_detail

RunStatusName = Literal["queued", "running", "succeeded", "failed", "diverged", "cancelled"]


# --- requests ------------------------------------------------------------------------------


class PresetRequest(BaseModel):
    """Create an experiment from a named preset (`GET /api/presets`), optionally changed."""

    model_config = ConfigDict(extra="forbid")

    # The names are published as an enum (the OpenAPI document says which are accepted), and
    # checked by `service.resolve_spec`, whose error lists them.
    preset: str = Field(
        max_length=64, examples=["smoke"], json_schema_extra={"enum": sorted(PRESETS)}
    )
    name: str | None = Field(None, min_length=1, max_length=120)
    overrides: dict[str, Any] | None = Field(
        None,
        description="`name`, `description`, `optimizers`, `seeds`, or any run field, deep-merged "
        'into the preset\'s base run, e.g. `{"steps": 50}`.',
        examples=[{"steps": 50}],
        json_schema_extra={"propertyNames": {"enum": OVERRIDE_KEYS}},
    )
    spec: ExperimentSpec | None = Field(
        None,
        description="The whole experiment as the client edited it from the preset (the page's "
        "form sends this); the preset is then only recorded as its origin, and `name` and "
        "`overrides` are not given.",
    )


def _dispatch_create(value: Any, handler: Any) -> PresetRequest | ExperimentSpec:
    """Validate as a preset request when the body names a preset, else as a full spec.

    Choosing the branch by hand (instead of letting pydantic try both members of the union)
    makes every error name the field of the branch the client meant: `runs.0.steps`, not the
    errors of both branches prefixed with model names.
    """
    _reject_nul(value, ())
    if isinstance(value, dict) and "preset" in value:
        return PresetRequest.model_validate(value)
    return ExperimentSpec.model_validate(value)


def _reject_nul(value: Any, loc: tuple) -> None:
    """Refuse NUL characters anywhere in a request body (PostgreSQL cannot store them), with
    an error located at the offending field like any other validation error."""
    if isinstance(value, str) and "\x00" in value:
        error = PydanticCustomError("nul_character", "NUL characters are not allowed")
        raise ValidationError.from_exception_data(
            "CreateExperiment", [{"type": error, "loc": loc, "input": value}]
        )
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_nul(key, loc)
            _reject_nul(item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_nul(item, (*loc, index))


CreateExperiment = Annotated[PresetRequest | ExperimentSpec, WrapValidator(_dispatch_create)]


class CloneRequest(BaseModel):
    """Run an experiment again: the same spec with new seeds, under this name if given."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=120, pattern=r"^[^\x00]*$")


# --- experiments and runs ------------------------------------------------------------------


class OptimizerInfo(BaseModel):
    """The optimizer of a run: its `name` and hyper-parameters (as in the run spec)."""

    model_config = ConfigDict(extra="allow")

    name: str


class RunOut(BaseModel):
    id: str
    experiment_id: str
    position: int
    label: str
    optimizer: OptimizerInfo
    seed: int
    status: RunStatusName
    step: int
    total_steps: int | None
    progress: float | None = Field(description="step / total_steps, in [0, 1]")
    device: str | None
    processes: int = Field(1, description="data-parallel ranks (the spec's `processes`)")
    nodes: int = Field(1, description="workers the run spans, `processes` ranks on each")
    data_source: str | None
    error: str | None
    cancel_requested: bool
    attempts: int
    final_metrics: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    estimate: RunEstimate | None = Field(
        None, description="Peak memory and time estimated when the run was queued"
    )
    status_detail: str | None = Field(
        None, description="What a queued run waits for, e.g. `waiting for a worker on queue gpu`"
    )
    provenance: dict[str, Any] | None = Field(
        None, description="Versions, git commit, host and device where it ran"
    )
    queue_position: int | None = Field(
        None,
        description="A queued run's place in its queue (1: the next a worker takes), counting "
        "every experiment's runs; given with an experiment's detail",
    )

    @classmethod
    def from_run(cls, run: Run, live_queues: set[str] | None = None, **extra: Any) -> Self:
        """`live_queues`: the queues live workers consume (store.queueing.live_queues); a
        queued run on another queue gets a `status_detail`."""
        progress = None
        if run.total_steps:
            progress = min(1.0, max(0.0, run.step / run.total_steps))
        return cls(
            id=run.id,
            experiment_id=run.experiment_id,
            position=run.position,
            label=run.label,
            optimizer=OptimizerInfo.model_validate(run.optimizer or {"name": "unknown"}),
            seed=run.seed,
            status=run.status,
            step=run.step,
            total_steps=run.total_steps,
            progress=progress,
            device=run.device,
            processes=(run.spec or {}).get("processes", 1),
            nodes=(run.spec or {}).get("nodes", 1),
            data_source=run.data_source,
            error=run.error,
            cancel_requested=bool(run.cancel_requested),
            attempts=run.attempts,
            final_metrics=run.final_metrics,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            heartbeat_at=run.heartbeat_at,
            estimate=run.estimate,
            status_detail=(
                None if live_queues is None else status_detail(run.status, run.spec, live_queues)
            ),
            provenance=run.provenance,
            **extra,
        )


class MetricInfo(BaseModel):
    name: str
    n_points: int
    step_min: int | None
    step_max: int | None


class RunDetail(RunOut):
    spec: dict[str, Any] = Field(description="The run's full spec")
    metrics: list[MetricInfo] = Field(description="The metrics it has recorded so far")


class ExperimentOut(BaseModel):
    id: str
    name: str
    description: str
    preset: str | None
    status: RunStatusName
    url: str = Field(description="The experiment's page")
    created_at: datetime
    updated_at: datetime
    tags: list[str] = Field(description="Its tags, in alphabetical order")
    archived_at: datetime | None = Field(description="When archived; null: in the list")
    runs: list[RunOut]

    @classmethod
    def from_experiment(
        cls,
        experiment: Experiment,
        base_url: str,
        live_queues: set[str] | None = None,
        queue_positions: dict[str, int] | None = None,
        **extra: Any,
    ) -> Self:
        return cls(
            id=experiment.id,
            name=experiment.name,
            description=(experiment.spec or {}).get("description", ""),
            preset=experiment.preset,
            status=experiment.status,
            url=experiment_url(base_url, experiment.id),
            created_at=experiment.created_at,
            updated_at=experiment.updated_at,
            tags=experiment.tags,
            archived_at=experiment.archived_at,
            runs=[
                RunOut.from_run(
                    run, live_queues, queue_position=(queue_positions or {}).get(run.id)
                )
                for run in experiment.runs
            ],
            **extra,
        )


class ExperimentDetail(ExperimentOut):
    spec: dict[str, Any] = Field(description="The validated experiment spec, runs expanded")
    notes: str = Field(description="The team's notes on it, Markdown (the page renders them)")
    last_event_id: int = Field(
        description="Newest event id: open the event stream with `?last_event_id=` this value "
        "to receive exactly what happens after this answer"
    )


def experiment_url(base_url: str, experiment_id: str) -> str:
    return f"{base_url}/experiments/{experiment_id}"


# --- sharing, presets, health --------------------------------------------------------------


class ShareLinkOut(BaseModel):
    token: str = Field(description="Shown only now; only its hash is stored")
    url: str = Field(description="The experiment's page, opened read-only with this token")


class ShareLinkInfo(BaseModel):
    """A share link as its owner sees it later (the token itself is never shown again)."""

    id: int
    created_at: datetime
    last_used_at: datetime | None = Field(description="To the minute; null: never opened")
    revoked_at: datetime | None


class RevokedOut(BaseModel):
    revoked: int = Field(description="How many live links were revoked")


class PresetOut(BaseModel):
    name: str
    description: str
    experiment: dict[str, Any] = Field(description="The preset in the compact comparison form")
    runs: int = Field(description="How many runs it expands to")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(description="database / broker: `ok` or what went wrong")


# --- resources (backend/estimate.py) -------------------------------------------------------


class RunEstimate(BaseModel):
    memory_bytes: int = Field(description="Estimated peak memory of the run's worker process")
    step_seconds: float = Field(description="Estimated seconds per training step")
    run_seconds: float = Field(description="Estimated seconds for the whole run")
