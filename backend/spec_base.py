"""The base classes of every part of the run spec (datasets, models, optimizers, runs,
experiments), so that one rule of parsing holds wherever a spec is read: the API, the worker,
`kfac-lab run SPEC.json` and the presets.

* `extra="forbid"`: a misspelt field is an error, never silently ignored.
* `frozen=True`: a validated spec is a value; changes go through `model_copy`.
* `strict=True`: a number where a number goes, a bool where a bool goes, a string where a
  string goes. Lax parsing turned `"steps": true` into one step and accepted `"steps": "10"`.
  JSON integers are valid for float fields (strict mode takes int → float), and a JSON number
  with no fractional part is an integer (`"steps": 10.0` is 10), as in JSON Schema, whose
  `integer` the OpenAPI document publishes.
* `allow_inf_nan=False`: Python's JSON parser reads `NaN`, `Infinity` and `1e999999` (→ inf);
  none is a meaningful hyper-parameter, and storing one wrote `null` into the spec (an
  infinite `kl_clip` came back as "no clipping").
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]
"""A free-text string of a spec (names, labels, swept values). The API refuses NUL anywhere
in a body (PostgreSQL cannot store it); the pattern publishes that rule in the JSON schema,
so that a request the schema accepts is one the server accepts."""


def _integral_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():  # False for NaN and ±inf
        return int(value)
    if isinstance(value, list):
        return [_integral_as_int(item) for item in value]
    return value


class SpecModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _integral_numbers(cls, data: Any) -> Any:
        """JSON's 10.0 is the integer 10 (see the module's docstring). Nested specs see to
        their own fields; lists of numbers (widths, seeds) are converted here."""
        if isinstance(data, dict):
            return {key: _integral_as_int(value) for key, value in data.items()}
        return data


def _name_required(schema: dict[str, Any]) -> None:
    schema["required"] = sorted({*schema.get("required", ()), "name"})


class TaggedSpec(SpecModel):
    """A member of a discriminated union (a model, an optimizer), told apart by its `name`.
    In Python `name` has its one value as default; in a request it must be given, since it
    picks the member, so the published JSON schema lists it as required."""

    model_config = ConfigDict(json_schema_extra=_name_required)
