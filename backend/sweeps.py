"""Sweeps: an optimizer entry of an experiment with a grid of hyper-parameter values.

An entry is written like an optimizer spec with one more key, e.g.
`{"name": "sgd_momentum", "momentum": 0.9, "sweep": {"lr": [0.003, 0.01, 0.03]}}`; its grid is
the cartesian product of the listed values (fields in the order given, values in the order
listed), each point merged into the optimizer's other settings. Every point is validated by the
optimizer's own pydantic model, so a sweep accepts exactly the values a single run would, and an
error names the value at fault (`sweep.lr.2`). Imports neither torch nor FastAPI.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, Field, TypeAdapter, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError, ValidationError

from backend import registry
from backend.spec_base import SpecModel, Text

MAX_RUNS = 48  # runs of one experiment; a grid is never larger

OptimizerSpec = registry.spec_union("optimizer")  # the same union as backend.spec's (cached)

SweepValue = bool | int | float | Text | None
"""A swept value: what the optimizer specs' fields hold."""

_OPTIMIZER: TypeAdapter[Any] = TypeAdapter(OptimizerSpec)
_SWEEP: TypeAdapter[dict[str, list[SweepValue]]] = TypeAdapter(
    dict[
        Annotated[str, Field(max_length=64)],
        Annotated[list[SweepValue], Field(min_length=1, max_length=MAX_RUNS)],
    ]
)


class SweptOptimizer(SpecModel):
    """An optimizer spec and the grid swept over its fields (empty: one point, as given)."""

    optimizer: OptimizerSpec
    sweep: dict[str, list[SweepValue]] = Field(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _flat(cls, value: Any, handler: Any) -> SweptOptimizer:
        """Read the flat form; errors keep the locations of a plain optimizer entry."""
        if isinstance(value, SweptOptimizer):
            return value
        if isinstance(value, BaseModel):  # an optimizer spec given in Python
            return handler({"optimizer": value})
        entry = dict(value) if isinstance(value, dict) else value
        sweep = entry.pop("sweep", {}) if isinstance(entry, dict) else {}
        optimizer = _OPTIMIZER.validate_python(entry)
        try:
            sweep = _SWEEP.validate_python(sweep)
        except ValidationError as error:  # a type error keeps its own type, under `sweep`
            details = [{**e, "loc": ("sweep", *e["loc"])} for e in error.errors()]
            raise ValidationError.from_exception_data("sweep", details) from None
        _check_grid(optimizer, sweep)
        return handler({"optimizer": optimizer, "sweep": sweep})

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        """Documented as the optimizer spec it is written as (the sweep is one more key)."""
        schema = handler(_OPTIMIZER.core_schema)
        schema["description"] = (
            "An optimizer spec; it may also hold `sweep`: {field: [values, ...]}, whose "
            "cartesian grid gives one configuration per point"
        )
        return schema

    def grid(self) -> list[dict[str, SweepValue]]:
        """The grid's points as {field: value}, the first field varying slowest."""
        fields = list(self.sweep)
        return [dict(zip(fields, values, strict=True)) for values in _product(self.sweep)]

    def points(self) -> list[tuple[Any, dict[str, SweepValue]]]:
        """Each grid point as (the optimizer spec with its values, the values)."""
        base = self.optimizer.model_dump()
        cls = type(self.optimizer)
        return [(cls.model_validate({**base, **point}), point) for point in self.grid()]


def config_label(optimizer: str, config: Mapping[str, Any]) -> str:
    """An optimizer with the swept values of its grid point, e.g. "sgd_momentum lr=0.01"."""
    return " ".join([optimizer, *(f"{key}={value}" for key, value in config.items())])


def check_expansion_size(listed: int, grid_sizes: list[int], seeds: int) -> None:
    """Refuse an experiment of `listed` runs plus grids × seeds over MAX_RUNS, naming the
    sweep that takes it over (or `seeds`)."""
    total = listed + sum(grid_sizes) * seeds
    if total <= MAX_RUNS:
        return
    running, loc = listed, ("seeds",)
    for i, size in enumerate(grid_sizes):
        running += size * seeds
        if running > MAX_RUNS:
            loc = ("optimizers", i, "sweep") if size > 1 else loc
            break
    message = f"the experiment would have {total} runs (optimizers × grids × seeds) > {MAX_RUNS}"
    raise _errors([(loc, message, total)])


def _product(sweep: dict[str, list[SweepValue]]) -> itertools.product:
    return itertools.product(*sweep.values())


def _check_grid(optimizer: Any, sweep: dict[str, list[SweepValue]]) -> None:
    """Unknown fields, grids over MAX_RUNS, and every point through the optimizer's model."""
    fields = set(type(optimizer).model_fields) - {"name"}
    unknown = [
        (("sweep", field), f"{optimizer.name} has no field {field!r}; one of {sorted(fields)}", [])
        for field in sweep
        if field not in fields
    ]
    if unknown:
        raise _errors(unknown)
    size = math.prod(len(values) for values in sweep.values())
    if size > MAX_RUNS:
        raise _errors([(("sweep",), f"a grid of {size} points exceeds {MAX_RUNS} runs", size)])
    base, cls = optimizer.model_dump(), type(optimizer)
    problems: dict[tuple, tuple] = {}
    for values in _product(sweep):
        point = dict(zip(sweep, values, strict=True))
        try:
            cls.model_validate({**base, **point})
        except ValidationError as error:
            for e in error.errors():
                # An error of a swept field names its value; one of a field that depends on a
                # swept one (e.g. gamma_interval on inverse_interval) names the first swept value.
                field = e["loc"][0] if e["loc"] and e["loc"][0] in point else next(iter(point))
                loc = ("sweep", field, sweep[field].index(point[field]))
                problems.setdefault(loc, (loc, e["msg"], point[field]))
    if problems:
        raise _errors(list(problems.values()))


def _errors(problems: list[tuple[tuple, str, Any]]) -> ValidationError:
    """Errors of a rule the JSON schema cannot state (a field the optimizer lacks, a point its
    model refuses, the runs over MAX_RUNS), typed `value_error` like the spec's other rules
    between fields, so a client tells them from type errors the same way everywhere."""
    return ValidationError.from_exception_data(
        "sweep",
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{message}", {"message": message}),
                loc=loc,
                input=value,
            )
            for loc, message, value in problems
        ],
    )
