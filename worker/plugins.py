"""The worker's side of the registry (backend/registry.py): a spec's builder, imported lazily.

The API validated the spec with the classes the entry points name; a worker builds the model,
the dataset and the optimizer with the functions their `builder` names. A worker that lacks a
plugin fails the run with an error that names it (the spec itself no longer validates there;
or, when the plugin's spec is installed but its training code cannot be imported, here).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from backend import registry


class PluginMissing(RuntimeError):
    """This worker cannot build what a spec names."""


def builder(kind: registry.Kind, name: str) -> Callable[..., Any]:
    """The function that builds the `kind` called `name` on this worker."""
    entry = registry.entries(kind).get(name)
    if entry is None:
        raise PluginMissing(registry.unknown(kind, name))
    module, function = entry.builder.split(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise PluginMissing(
            f"{kind} {name!r} (package {entry.distribution}) cannot be built on this worker: "
            f"its builder {entry.builder} does not import ({error})"
        ) from error
