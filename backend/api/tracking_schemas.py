"""Request and response bodies of the tracking endpoints (backend/api/routes/tracking.py).

Everything a script sends is checked here, so that bad input is a 422 naming the field and
never reaches the store: ids, names, finite numbers, batch sizes, matrix shapes and sizes.
Matrices travel as `{"dtype": "float32", "shape": [r, c], "data": base64, "original_shape":
[R, C]}` (the encoding of `backend.store.snapshots.to_base64_matrix`), already block-pooled
by the client to at most `MAX_SIDE` per side exactly as the store would pool them, so a
snapshot of a 4096-parameter probe is a few MB rather than hundreds.

Bodies parse as the run spec does (`backend.spec_base.SpecModel`: strict types, finite
numbers, JSON's 10.0 is the integer 10, unknown fields refused), so a request is accepted
exactly when it matches the published schema, or else breaks a rule stated in a field's
description (shapes, base64, sizes). Mappings keyed by a pattern publish
`additionalProperties: false` as well: pydantic's schema gives only `patternProperties`, which
would let any other key through, while the server refuses it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, Strict, field_validator, model_validator

from backend.spec import MAX_PROBE_PARAMETERS
from backend.spec_base import SpecModel
from backend.store.snapshots import MAX_SIDE, pooled_side
from backend.tracking_protocol import (
    LEVEL_PATTERN,
    MAX_BATCH_LINES,
    MAX_BATCH_POINTS,
    MAX_LINE_CHARS,
    MAX_STEP,
    METRIC_NAME_PATTERN,
)

MAX_CONFIG_CHARS = 20_000
MAX_EXTRAS_CHARS = 200_000
MAX_MATRICES = 6
MAX_BLOCKS = 64
# A snapshot of MAX_MATRICES pooled matrices in base64 (4/3 of 4 bytes a value), with room.
MAX_SNAPSHOT_BODY_BYTES = 12_000_000

RunId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="32 hex digits")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]
MetricName = Annotated[str, Field(pattern=METRIC_NAME_PATTERN)]
Step = Annotated[int, Field(ge=0, le=MAX_STEP)]
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-1e300, le=1e300)]
# Strict mode takes only a Python tuple, and a JSON array arrives as a list: the tuple itself
# is lax, its items stay strict.
LAX_TUPLE = Strict(False)
ONLY_PATTERN_KEYS = {"additionalProperties": False}


class _Body(SpecModel):
    """A request body of the tracking API, parsed by the spec's rules (module docstring)."""


def _json_chars(value: Any, limit: int, what: str) -> Any:
    """Refuse values that are not JSON (NaN included) or whose JSON text exceeds `limit`."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be plain JSON with finite numbers ({error})") from None
    if len(text) > limit:
        raise ValueError(f"{what} is {len(text)} characters of JSON, more than {limit}")
    if "\x00" in text or "\\u0000" in text:
        raise ValueError(f"{what} may not contain NUL characters")
    return value


class StartRun(_Body):
    """Create (or, on a retry, find) a tracked run in the experiment named `experiment`."""

    id: RunId = Field(description="Chosen by the client, so that a retried create is harmless")
    experiment: Name = Field(description="Runs of one experiment name are grouped together")
    label: Name = "run"
    config: dict[str, Any] = Field(default_factory=dict, description="Hyper-parameters etc.")
    seed: int = Field(0, ge=0, lt=2**31)
    total_steps: int | None = Field(None, ge=1, le=MAX_STEP)
    client: str = Field("client", max_length=150, pattern=r"^[^\x00]*$")
    provenance: dict[str, Any] | None = Field(
        None, description="Versions, git commit, host and device (kfac_lab.provenance)"
    )

    @field_validator("config", "provenance")
    @classmethod
    def _small_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _json_chars(value, MAX_CONFIG_CHARS, "the value")

    def optimizer(self) -> dict[str, Any]:
        """The run's optimizer as the pages show it: `config["optimizer"]` when it is a name
        or a `{"name": ...}` mapping, else "custom"."""
        given = self.config.get("optimizer")
        if isinstance(given, str) and given:
            return {"name": given[:64]}
        if isinstance(given, dict) and isinstance(given.get("name"), str):
            return {**given, "name": given["name"][:64]}
        return {"name": "custom"}


class TrackedRunOut(BaseModel):
    run_id: str
    experiment_id: str
    status: str
    created: bool = Field(description="False when the run existed already (a retried create)")
    url: str = Field(description="The experiment's page")
    contact_timeout_s: float = Field(
        description="A run not heard from (no write, no heartbeat) for this long is failed "
        "(KFAC_TRACKING_TIMEOUT_S)"
    )


class Contact(BaseModel):
    cancel_requested: bool = Field(description="Someone pressed cancel on the run's page")


class MetricBatch(_Body):
    """Points `[name, step, wall_time, value]`; a (name, step) already stored keeps its value."""

    points: list[Annotated[tuple[MetricName, Step, Finite, Finite], LAX_TUPLE]] = Field(
        max_length=MAX_BATCH_POINTS
    )


class LogBatch(_Body):
    """Lines `[seq, unix_time, level, message]`, numbered by the client from 0; a seq already
    stored is not written again, so a batch may be retried."""

    lines: list[
        Annotated[
            tuple[
                Step,
                Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)],
                Annotated[str, Field(pattern=LEVEL_PATTERN)],
                Annotated[str, Field(max_length=MAX_LINE_CHARS)],
            ],
            LAX_TUPLE,
        ]
    ] = Field(max_length=MAX_BATCH_LINES)


class MetricsStored(BaseModel):
    stored: int = Field(description="Points that were new")
    cancel_requested: bool = Field(description="Someone asked, on the page, to stop this run")


class Matrix(_Body):
    dtype: Literal["float32"] = "float32"
    shape: Annotated[
        tuple[Annotated[int, Field(ge=1, le=MAX_SIDE)], Annotated[int, Field(ge=1, le=MAX_SIDE)]],
        LAX_TUPLE,
        Field(description=f"original_shape pooled to at most {MAX_SIDE} per side"),
    ]
    original_shape: Annotated[
        tuple[
            Annotated[int, Field(ge=1, le=MAX_PROBE_PARAMETERS)],
            Annotated[int, Field(ge=1, le=MAX_PROBE_PARAMETERS)],
        ],
        LAX_TUPLE,
        Field(description="square: the probed parameters on both sides"),
    ]
    data: str = Field(description="little-endian float32 values, row-major, in base64")

    @model_validator(mode="after")
    def _consistent(self) -> Matrix:
        rows, cols = self.original_shape
        if rows != cols:
            raise ValueError(f"original_shape {list(self.original_shape)} is not square")
        pooled = [pooled_side(rows), pooled_side(cols)]
        if list(self.shape) != pooled:
            raise ValueError(f"shape must be {pooled}: the original pooled to <= {MAX_SIDE}")
        values = self.array()
        if not np.isfinite(values).all():
            raise ValueError("values must be finite (leave out a matrix that is not)")
        return self

    def array(self) -> np.ndarray:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data is not base64") from None
        rows, cols = self.shape
        if len(raw) != rows * cols * 4:
            raise ValueError(f"data holds {len(raw)} bytes, shape needs {rows * cols * 4}")
        return np.frombuffer(raw, dtype="<f4").reshape(rows, cols)


MatrixName = Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")]


class SnapshotIn(_Body):
    """A curvature snapshot, as `kfac.snapshot.snapshot_payload` makes it."""

    step: Step
    blocks: list[Annotated[tuple[Step, Step], LAX_TUPLE]] = Field(
        min_length=1,
        max_length=MAX_BLOCKS,
        description="increasing [start, stop) ranges within the matrices' original side",
    )
    matrices: dict[MatrixName, Matrix] = Field(
        min_length=1,
        max_length=MAX_MATRICES,
        json_schema_extra=ONLY_PATTERN_KEYS,
        description="all over the same parameters (one original side)",
    )
    spectra: dict[str, Any] | None = None
    relative_errors: dict[str, Any] | None = None
    block_averages: dict[str, Any] | None = None
    extras: dict[str, Any] | None = None

    @field_validator("spectra", "relative_errors", "block_averages", "extras")
    @classmethod
    def _small_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _json_chars(value, MAX_EXTRAS_CHARS, "the value")

    @model_validator(mode="after")
    def _blocks_cover_matrices(self) -> SnapshotIn:
        sides = {matrix.original_shape[0] for matrix in self.matrices.values()}
        if len(sides) != 1:
            raise ValueError("all matrices must be over the same parameters (one original side)")
        side = sides.pop()
        previous = 0
        for start, stop in self.blocks:
            if not previous <= start < stop <= side:
                raise ValueError(f"blocks must be increasing [start, stop) ranges within {side}")
            previous = stop
        return self


class EndRun(_Body):
    status: Literal["succeeded", "failed", "diverged", "cancelled"] = "succeeded"
    error: str | None = Field(None, max_length=20_000, pattern=r"^[^\x00]*$")
    step: Step | None = None
    final_metrics: (
        Annotated[
            dict[MetricName, Finite], Field(max_length=1000, json_schema_extra=ONLY_PATTERN_KEYS)
        ]
        | None
    ) = None
