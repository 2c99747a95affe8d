"""The registry: every registered spec has a builder, plugins are found by entry point, and a
name nobody provides is an error wherever it appears (never a fall-back)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from backend import registry
from backend.spec import RunSpec
from worker import plugins
from worker.training import build_optimizer
from worker.zoo.models import build_model

KINDS = ("model", "dataset", "optimizer")


@pytest.mark.parametrize("kind", KINDS)
def test_every_registered_spec_has_a_builder(kind: str):
    entries = registry.entries(kind)
    assert entries, f"no {kind} registered"
    for name in entries:
        assert callable(plugins.builder(kind, name)), (kind, name)


def test_the_built_ins_come_from_kfac_labs_entry_points():
    optimizers = registry.entries("optimizer")
    assert {"sgd", "sgd_momentum", "adam", "kfac", "kfac_tridiag", "kfc", "kfc_pre"} <= set(
        optimizers
    )
    assert {entry.distribution for entry in optimizers.values()} == {registry.BUILT_IN}


def test_every_built_in_optimizer_trains_with_its_own_builder():
    """No optimizer falls back to SGD: each builds an optimizer of its own kind."""
    built = {}
    for name in registry.names("optimizer"):
        model_name = "convnet" if name.startswith("kfc") else "mlp"
        model = {"name": model_name, "hidden": [4]}
        if model_name == "convnet":
            model |= {"channels": [2], "pooling": ["max"]}
        spec = RunSpec.model_validate(
            {"dataset": "digits8x8", "model": model, "optimizer": {"name": name}}
        )
        optimizer, _ = build_optimizer(spec, build_model(spec))
        built[name] = type(optimizer).__name__
    assert built["adam"] == "Adam" and built["sgd"] == built["sgd_momentum"] == "SGD"
    assert {built[name] for name in ("kfac", "kfac_tridiag", "kfc", "kfc_pre")} == {"KFAC"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("optimizer", {"name": "diag_fisher"}, "unknown optimizer 'diag_fisher'"),
        ("model", {"name": "skinny_mlp"}, "unknown model 'skinny_mlp'"),
        ("dataset", "two_spirals", "unknown dataset 'two_spirals'"),
    ],
)
def test_an_unknown_name_is_refused_naming_it(field: str, value, message: str):
    with pytest.raises(ValidationError, match=message):
        RunSpec.model_validate({field: value})


def test_a_builder_the_worker_cannot_import_names_the_package(monkeypatch: pytest.MonkeyPatch):
    entries = dict(registry.entries("optimizer"))
    entries["kfac"] = replace(entries["kfac"], builder="no_such_plugin.train:build")
    monkeypatch.setattr(registry, "entries", lambda kind: entries)
    with pytest.raises(plugins.PluginMissing, match="package kfac-lab.*no_such_plugin"):
        plugins.builder("optimizer", "kfac")


def test_an_installed_plugin_is_found(plugin_on_path: Path):
    for kind, name in (
        ("model", "skinny_mlp"),
        ("dataset", "two_spirals"),
        ("optimizer", "diag_fisher"),
    ):
        entry = registry.entries(kind)[name]
        assert entry.distribution == "kfac-lab-example-plugin"
        assert callable(plugins.builder(kind, name))
    assert registry.names("optimizer")[-1] == "diag_fisher"  # built-ins first


@pytest.mark.parametrize("name", [{}, [], 3, None])
def test_a_name_of_the_wrong_type_is_a_validation_error(name):
    with pytest.raises(ValidationError):
        RunSpec.model_validate({"optimizer": {"name": name}})
