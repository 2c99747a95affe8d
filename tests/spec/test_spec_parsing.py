"""How a spec is parsed: strictly (a number where a number goes, a bool where a bool goes, a
string where a string goes), with no NaN or infinity anywhere, by one base class that every
part of the spec shares — in the API, the worker, the presets and `kfac-lab run`."""

from __future__ import annotations

import json
import math
import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from backend.presets import PRESETS, expand_preset
from backend.spec import ExperimentSpec, ModelSpec, OptimizerSpec, RunSpec
from backend.spec_base import SpecModel, TaggedSpec


def spec_models(root: type[BaseModel] = ExperimentSpec) -> set[type[BaseModel]]:
    """Every model a spec is made of, found through the field annotations from `root`."""
    found: set[type[BaseModel]] = set()

    def visit(annotation: Any) -> None:
        model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if model and annotation not in found:
            found.add(annotation)
            for field in annotation.model_fields.values():
                visit(field.annotation)
        for argument in typing.get_args(annotation):
            visit(argument)

    visit(root)
    return found


def float_fields() -> list[tuple[type[BaseModel], str]]:
    """(model, field) for every field of a spec model that takes a float."""

    def takes_float(annotation: Any) -> bool:
        if typing.get_origin(annotation) is dict:  # floats inside: a different location
            return False
        return annotation is float or any(takes_float(a) for a in typing.get_args(annotation))

    return sorted(
        (
            (model, name)
            for model in spec_models()
            for name, field in model.model_fields.items()
            if takes_float(field.annotation)
        ),
        key=lambda pair: (pair[0].__name__, pair[1]),
    )


def error_at(error: ValidationError) -> dict[tuple, str]:
    return {tuple(e["loc"]): e["type"] for e in error.errors()}


def union_members(union: Any) -> set[type[BaseModel]]:
    return set(typing.get_args(typing.get_args(union)[0]))


def test_every_part_of_the_spec_shares_the_one_base_class():
    models = spec_models()
    names = {model.__name__ for model in models}
    assert {"RunSpec", "DatasetSpec", "ProbeSpec", "ExponentialBatchSchedule"} <= names
    assert all(issubclass(model, SpecModel) for model in models), models
    members = union_members(ModelSpec) | union_members(OptimizerSpec)
    assert len(members) == 10 and members <= models
    assert all(issubclass(member, TaggedSpec) for member in members)


@pytest.mark.parametrize(
    ("model", "field"), float_fields(), ids=lambda v: getattr(v, "__name__", v)
)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_no_float_field_takes_nan_or_infinity(model, field, value):
    with pytest.raises(ValidationError) as info:
        model.model_validate({field: value})
    assert error_at(info.value).get((field,)) == "finite_number", info.value


def test_a_run_s_grid_point_takes_no_nan_or_infinity():
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate({"config": {"lr": math.inf}})
    assert error_at(info.value).get(("config", "lr", "float")) == "finite_number", info.value


def test_there_are_float_fields_to_check():
    names = {f"{model.__name__}.{field}" for model, field in float_fields()}
    assert {"KFACSpec.kl_clip", "RunSpec.epochs", "AdamSpec.eps", "ProbeSpec.damping"} <= names


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        ({"steps": True}, ("steps",)),
        ({"steps": "10"}, ("steps",)),
        ({"steps": 10.5}, ("steps",)),
        ({"seed": "1"}, ("seed",)),
        ({"batch_size": True}, ("batch_size", "constrained-int")),
        ({"dataset": {"name": "synthetic", "download": "false"}}, ("dataset", "download")),
        ({"dataset": {"name": "synthetic", "download": 0}}, ("dataset", "download")),
        ({"optimizer": {"name": "sgd", "lr": "0.1"}}, ("optimizer", "sgd", "lr")),
        ({"optimizer": {"name": "kfac", "gamma_search": 1}}, ("optimizer", "kfac", "gamma_search")),
        ({"model": {"name": "mlp", "hidden": ["8"]}}, ("model", "mlp", "hidden", 0)),
        ({"model": {"name": "mlp", "width_scale": True}}, ("model", "mlp", "width_scale")),
        ({"probe": {"units": 4.5}}, ("probe", "units")),
        ({"label": 7}, ("label",)),
    ],
)
def test_values_of_the_wrong_type_are_refused(data, loc):
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    assert loc in error_at(info.value), info.value


def test_json_numbers_keep_their_meaning():
    """A JSON integer is a valid float, and 10.0 is the integer 10 (as in JSON Schema)."""
    spec = RunSpec.model_validate(
        {
            "steps": 20.0,
            "seed": 3.0,
            "model": {"name": "mlp", "hidden": [8.0, 4], "width_scale": 1},
            "optimizer": {"name": "sgd", "lr": 1},
            "batch_size": 32.0,
        }
    )
    assert spec.steps == 20 and isinstance(spec.steps, int)
    assert spec.model.hidden == [8, 4] and all(isinstance(w, int) for w in spec.model.hidden)
    assert spec.optimizer.lr == 1.0 and isinstance(spec.optimizer.lr, float)
    assert isinstance(spec.batch_size, int) and isinstance(spec.seed, int)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_and_their_stored_form_validate_strictly(name):
    """What the API stores (the JSON dump) is read back by the worker and by clone."""
    spec = expand_preset(name)
    stored = json.loads(json.dumps(spec.model_dump(mode="json")))
    assert ExperimentSpec.model_validate(stored) == spec


def test_the_published_schema_refuses_what_the_server_refuses():
    """`{}` and `optimizers` without a `base` are refused by the server; so by the schema."""
    import jsonschema_rs

    validator = jsonschema_rs.validator_for(ExperimentSpec.model_json_schema())
    for body in ({}, {"runs": []}, {"runs": [{}], "seeds": [1]}, {"base": None}):
        assert not validator.is_valid(body), body
        with pytest.raises(ValidationError):
            ExperimentSpec.model_validate(body)
    for body in ({"runs": [{}]}, {"base": {}}, {"base": {}, "optimizers": [{"name": "sgd"}]}):
        assert validator.is_valid(body), body
        ExperimentSpec.model_validate(body)
    # A model or an optimizer is told by its name, so a request must give it.
    assert not validator.is_valid({"base": {"model": {"hidden": [8]}}})
    with pytest.raises(ValidationError):
        ExperimentSpec.model_validate({"base": {"model": {"hidden": [8]}}})


def test_the_command_line_reads_spec_files_strictly(tmp_path):
    from worker.cli import app

    path = tmp_path / "spec.json"
    path.write_text('{"runs": [{"steps": true}], "name": "x"}')
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "runs.0.steps" in result.output, result.output
    path.write_text('{"runs": [{"optimizer": {"name": "kfac", "kl_clip": Infinity}}]}')
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "kl_clip" in result.output, result.output
