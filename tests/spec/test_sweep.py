"""Sweeps: an optimizer entry's grid expands into runs exactly (count, order, labels, config),
and every bad sweep is an error that names the value at fault."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from backend.presets import expand_preset
from backend.spec import MAX_RUNS, ExperimentSpec, KFACSpec, SGDMomentumSpec

BASE = {"dataset": "synthetic", "model": {"name": "mlp", "hidden": [8]}, "steps": 10}


def experiment(*optimizers: dict, seeds: list[int] | None = None) -> ExperimentSpec:
    return ExperimentSpec(base=BASE, optimizers=list(optimizers), seeds=seeds or [0])


def errors(*optimizers: dict, seeds: list[int] | None = None) -> dict[tuple, str]:
    with pytest.raises(ValidationError) as info:
        experiment(*optimizers, seeds=seeds)
    return {tuple(e["loc"]): e["msg"] for e in info.value.errors()}


def test_a_grid_expands_optimizer_by_point_by_seed() -> None:
    sweep = {"lr": [0.01, 0.1], "nesterov": [False, True]}
    spec = experiment(
        {"name": "kfac"}, {"name": "sgd_momentum", "momentum": 0.5, "sweep": sweep}, seeds=[3, 7]
    )
    assert len(spec.runs) == 2 + 2 * 2 * 2
    assert [run.display_label() for run in spec.runs] == [
        "kfac · seed 3",
        "kfac · seed 7",
        "sgd_momentum lr=0.01 nesterov=False · seed 3",
        "sgd_momentum lr=0.01 nesterov=False · seed 7",
        "sgd_momentum lr=0.01 nesterov=True · seed 3",
        "sgd_momentum lr=0.01 nesterov=True · seed 7",
        "sgd_momentum lr=0.1 nesterov=False · seed 3",
        "sgd_momentum lr=0.1 nesterov=False · seed 7",
        "sgd_momentum lr=0.1 nesterov=True · seed 3",
        "sgd_momentum lr=0.1 nesterov=True · seed 7",
    ]
    last = spec.runs[-1]
    assert last.optimizer == SGDMomentumSpec(lr=0.1, momentum=0.5, nesterov=True)
    assert last.config == {"lr": 0.1, "nesterov": True} and spec.runs[0].config == {}
    # The expanded form is canonical and round-trips.
    assert ExperimentSpec.model_validate_json(spec.model_dump_json()) == spec


def test_a_single_value_sweep_is_one_configuration() -> None:
    spec = experiment({"name": "adam", "sweep": {"lr": [0.003]}})
    assert [run.display_label() for run in spec.runs] == ["adam lr=0.003 · seed 0"]
    assert spec.runs[0].optimizer.lr == 0.003


@pytest.mark.parametrize(
    ("entry", "loc", "message"),
    [
        ({"sweep": {"lr": [0.1, 0.2, -1]}}, ("sweep", "lr", 2), "greater than 0"),
        ({"sweep": {"lr": [0.1, "fast"]}}, ("sweep", "lr", 1), "valid number"),
        ({"sweep": {"momentum": [0.5, 1.0]}}, ("sweep", "momentum", 1), "less than 1"),
        ({"sweep": {"betas": [0.1]}}, ("sweep", "betas"), "no field 'betas'"),
        ({"sweep": {"name": ["adam"]}}, ("sweep", "name"), "no field 'name'"),
        ({"sweep": {"lr": []}}, ("sweep", "lr"), "at least 1 item"),
        ({"sweep": {"lr": 0.1}}, ("sweep", "lr"), "valid list"),
        ({"sweep": [0.1]}, ("sweep",), "valid dictionary"),
        ({"sweep": {"lr": [0.1] * 7, "momentum": [0.1] * 7}}, ("sweep",), "49 points"),
        ({"lr": -1, "sweep": {"momentum": [0.5]}}, ("sgd_momentum", "lr"), "greater than 0"),
    ],
)
def test_bad_sweeps_name_the_field(entry: dict, loc: tuple, message: str) -> None:
    found = errors({"name": "kfac"}, {"name": "sgd_momentum", **entry})
    assert message in found[("optimizers", 1, *loc)], found


def test_a_rule_between_fields_names_the_swept_value() -> None:
    # gamma_interval must be a multiple of inverse_interval: 20 is not a multiple of 15.
    entry = {"name": "kfac", "gamma_search": True, "sweep": {"inverse_interval": [10, 15]}}
    found = errors(entry)
    assert (
        "multiple of inverse_interval" in found[("optimizers", 0, "sweep", "inverse_interval", 1)]
    )


def test_too_many_runs_names_the_sweep_or_the_seeds() -> None:
    grid = {"name": "sgd", "sweep": {"lr": [0.01 * k for k in range(1, 13)]}}  # 12 points
    assert ("optimizers", 1, "sweep") in errors({"name": "kfac"}, grid, seeds=[0, 1, 2, 3])
    assert ("seeds",) in errors({"name": "kfac"}, {"name": "sgd"}, seeds=list(range(MAX_RUNS)))
    experiment({"name": "kfac"}, grid, seeds=[0, 1, 2])  # 3 + 36 runs: fits


def test_the_api_schema_documents_the_sweep() -> None:
    schema = ExperimentSpec.model_json_schema()
    entry = schema["$defs"]["SweptOptimizer"]
    assert "sweep" in entry["description"] and "oneOf" in entry


def test_the_autoencoder_race_preset() -> None:
    race = expand_preset("autoencoder_race")
    assert len(race.runs) == (1 + 4 + 4) * 3
    labels = [run.display_label() for run in race.runs]
    assert labels[:4] == [
        "kfac · seed 0",
        "kfac · seed 1",
        "kfac · seed 2",
        "sgd_momentum lr=0.003 · seed 0",
    ]
    assert labels[-1] == "adam lr=0.01 · seed 2"
    assert {run.dataset.name for run in race.runs} == {"digits_offline"}
    assert race.runs[0].optimizer == KFACSpec()  # K-FAC with its defaults
