"""The one registry of what a run spec may name: models, datasets and optimizers.

Everything is found through Python entry points, the built-ins (kfac-lab's own pyproject) and
installed plugin packages alike:

    [project.entry-points."kfac_lab.optimizers"]
    diag_fisher = "my_plugin.specs:DiagonalFisherSpec"

* `kfac_lab.models`, `kfac_lab.optimizers`: the entry point is a pydantic spec class whose
  `name` field is `Literal[<entry point name>]` (the discriminator of the spec's union) and
  whose `builder` class variable names, as "module:function", what builds it on a worker.
* `kfac_lab.datasets`: the entry point is a `backend.datasets.DatasetInfo` (sizes, shapes, a
  description and its `builder`, the loader).

The API imports only the entry points' own modules (pydantic, no torch), so a plugin's spec
module must not import torch, nor `backend.spec` (which is being built from this registry);
`backend.architectures`, `backend.datasets` and pydantic are what it needs. Only a worker
imports a builder (`worker.plugins.builder`), so an API can offer a plugin whose training code
it could not even import. A name that no entry point provides is an error wherever it
appears (422 at create, a failed run on a worker that lacks the plugin), never a fall-back.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import BeforeValidator, Field

Kind = Literal["model", "dataset", "optimizer"]
GROUPS: dict[str, str] = {
    "model": "kfac_lab.models",
    "dataset": "kfac_lab.datasets",
    "optimizer": "kfac_lab.optimizers",
}
BUILT_IN = "kfac-lab"  # the distribution of the built-ins


class PluginError(RuntimeError):
    """An entry point that does not keep the contract above, or missing built-ins."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    value: Any  # the spec class (model, optimizer) or the DatasetInfo (dataset)
    distribution: str  # the installed package that provides it
    builder: str  # "module:function", imported by workers only


@functools.cache
def entries(kind: Kind) -> dict[str, Entry]:
    """Every `kind` the installed packages provide, by name (built-ins first, then by name)."""
    found: dict[str, Entry] = {}
    for point in entry_points(group=GROUPS[kind]):
        distribution = point.dist.name if point.dist is not None else "unknown"
        value = point.load()
        entry = Entry(kind, point.name, value, distribution, _builder(point.name, value))
        if kind != "dataset" and _spec_name(value) != point.name:
            raise PluginError(
                f"{distribution}: entry point {point.name!r} of {GROUPS[kind]} is a spec named "
                f"{_spec_name(value)!r}; its `name` field must be Literal[{point.name!r}]"
            )
        if point.name in found:
            other = found[point.name].distribution
            raise PluginError(f"{kind} {point.name!r} is provided twice: {other}, {distribution}")
        found[point.name] = entry
    if not any(entry.distribution == BUILT_IN for entry in found.values()):
        raise PluginError(
            f"no built-in {kind} is registered: kfac-lab's entry points are missing from its "
            "installed metadata; reinstall it (pip install -e .)"
        )
    order = sorted(found.values(), key=lambda e: (e.distribution != BUILT_IN, e.name))
    return {entry.name: entry for entry in order}


def names(kind: Kind) -> list[str]:
    return list(entries(kind))


@functools.cache
def spec_union(kind: Literal["model", "optimizer"]) -> Any:
    """The discriminated union of every registered spec class of `kind`, for a pydantic field.

    An unknown `name` is refused with a message naming it and what is installed (pydantic's
    own message for a bad tag does not say that a plugin may be missing)."""
    classes = tuple(entry.value for entry in entries(kind).values())
    union = Union[classes] if len(classes) > 1 else classes[0]  # noqa: UP007 - built at run time
    return Annotated[
        union,
        Field(discriminator="name"),
        BeforeValidator(functools.partial(_known_name, kind)),
    ]


def unknown(kind: str, name: Any) -> str:
    """The error for a `kind` named `name` that no installed package provides."""
    known = ", ".join(entries(kind))  # type: ignore[arg-type]
    return f"unknown {kind} {name!r}: no installed plugin provides it (installed: {known})"


def _known_name(kind: str, value: Any) -> Any:
    """An object without a `name`, or with one nothing provides, is refused in words (pydantic
    would say "Unable to extract tag using discriminator 'name'"). Only a string can name an
    entry; any other `name` (a number, {}, []) is left to the discriminator, whose own 422 says
    it is not one of the tags (a dict or list would not even hash for the lookup here)."""
    if isinstance(value, dict) and "name" not in value:
        known = ", ".join(entries(kind))  # type: ignore[arg-type]
        raise ValueError(f"a {kind} needs its name: one of {known}")
    name = value.get("name") if isinstance(value, dict) else None
    if isinstance(name, str) and name not in entries(kind):
        raise ValueError(unknown(kind, name))
    return value


def _spec_name(spec: Any) -> Any:
    field = getattr(spec, "model_fields", {}).get("name")
    allowed = get_args(field.annotation) if field is not None else ()
    return allowed[0] if len(allowed) == 1 else None


def _builder(name: str, value: Any) -> str:
    builder = getattr(value, "builder", None)
    if not isinstance(builder, str) or builder.count(":") != 1:
        raise PluginError(f"{name!r} must name its builder as `builder = 'module:function'`")
    return builder
