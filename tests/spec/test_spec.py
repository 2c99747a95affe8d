"""The run spec: field-level errors, limits, the comparison form, presets, queues."""

import pytest
from pydantic import ValidationError

from backend.presets import PRESETS, expand_preset
from backend.spec import (
    MAX_PROBE_PARAMETERS,
    MAX_RUNS,
    MAX_STEPS,
    ExperimentSpec,
    ExponentialBatchSchedule,
    RunSpec,
    parameter_count,
    queue_for,
    steps_for_epochs,
)
from tests.imports import imported_after


def error_fields(error: ValidationError) -> set[tuple]:
    return {tuple(e["loc"]) for e in error.errors()}


def test_defaults_are_the_paper_autoencoder():
    spec = RunSpec()
    assert spec.layer_dims() == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    assert spec.parameter_count() == 2_837_314
    assert spec.loss == "bce" and spec.total_steps() == 1000


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"steps": MAX_STEPS + 1}, ("steps",)),
        ({"steps": 0}, ("steps",)),
        ({"batch_size": 5000}, ("batch_size",)),  # more than the 4,000 training digits
        ({"model": {"name": "autoencoder", "encoder": [9000, 30]}}, ("model",)),
        ({"model": {"name": "autoencoder", "encoder": [4000, 4000, 30]}}, ("model",)),
        ({"model": {"name": "mlp", "activation": "swish"}}, ("model", "mlp", "activation")),
        ({"optimizer": {"name": "sgd", "lr": -1}}, ("optimizer", "sgd", "lr")),
        ({"optimizer": {"name": "lbfgs"}}, ("optimizer",)),
        ({"optimizer": {"name": "kfac", "bogus": 1}}, ("optimizer", "kfac", "bogus")),
        ({"probe": {"units": 200}}, ("probe",)),
        ({"probe": {"layers": [8]}}, ("probe",)),
        ({"steps": 100, "snapshot_interval": 0}, ("snapshot_interval",)),
        ({"steps": 10_000, "snapshot_interval": 10}, ("snapshot_interval",)),
        ({"steps": 10, "epochs": 2}, ("epochs",)),
        ({"epochs": 5000, "batch_size": 100}, ("epochs",)),
        ({"dataset": "cifar"}, ("dataset", "name")),
        ({"device": "tpu"}, ("device",)),
    ],
)
def test_errors_name_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    assert field in error_fields(info.value)


def test_kfac_gamma_interval_must_follow_inverses():
    with pytest.raises(ValidationError) as info:
        RunSpec(optimizer={"name": "kfac", "gamma_search": True, "gamma_interval": 30})
    assert ("optimizer", "kfac", "gamma_interval") in error_fields(info.value)


def test_model_size_arithmetic_matches_torch_free_count():
    spec = RunSpec(dataset="digits8x8", model={"name": "mlp", "hidden": [32, 16]})
    assert spec.layer_dims() == [64, 32, 16, 10]
    assert spec.parameter_count() == parameter_count([64, 32, 16, 10]) == 65 * 32 + 33 * 16 + 170
    scaled = RunSpec(model={"name": "autoencoder", "encoder": [100, 10], "width_scale": 0.5})
    assert scaled.layer_dims() == [784, 50, 5, 50, 784]


def test_probe_defaults_to_middle_four_layers_within_limit():
    spec = RunSpec()
    assert spec.probe.layer_indices(8) == [2, 3, 4, 5]
    assert spec.probe.parameter_count(spec.layer_dims()) == 4 * 17 * 16
    assert spec.probe.parameter_count(spec.layer_dims()) <= MAX_PROBE_PARAMETERS


def test_epochs_and_the_exponential_schedule():
    schedule = ExponentialBatchSchedule(initial=100, growth=10)
    assert schedule.size_at(1, 4000) == 100
    assert schedule.size_at(11, 4000) == round(100 * 2.718281828459045)
    assert schedule.size_at(1000, 4000) == 4000
    assert steps_for_epochs(2, 250, 4000) == 32
    spec = RunSpec(epochs=1, batch_size={"kind": "exponential", "initial": 1000, "growth": 1e6})
    assert spec.total_steps() == 4


@pytest.mark.parametrize(
    ("epochs", "batch", "n_train"),
    [
        (2, 250, 4000),
        (0.3, 7, 1000),
        (10_000, 1, 60_000),  # more than MAX_STEPS: capped at MAX_STEPS + 1
        (3, ExponentialBatchSchedule(initial=100, growth=10), 4000),
        (1.5, ExponentialBatchSchedule(initial=3, growth=125.0, maximum=50), 60_000),
        (50, ExponentialBatchSchedule(initial=1, growth=1e6), 60_000),
    ],
)
def test_steps_for_epochs_counts_mini_batches_until_the_epochs_are_seen(epochs, batch, n_train):
    needed, seen, step = epochs * n_train, 0, 0  # the definition, one step at a time
    while seen < needed and step <= MAX_STEPS:
        step += 1
        seen += min(batch, n_train) if isinstance(batch, int) else batch.size_at(step, n_train)
    assert steps_for_epochs(epochs, batch, n_train) == step


def test_comparison_form_expands_to_runs():
    exp = ExperimentSpec(
        name="cmp",
        base={"steps": 20, "model": {"name": "mlp"}},
        optimizers=[{"name": "sgd_momentum", "nesterov": True}, {"name": "kfac"}],
        seeds=[1, 2, 3],
    )
    assert len(exp.runs) == 6 and exp.base is None and exp.optimizers == []
    labels = [r.display_label() for r in exp.runs[:2]]
    assert labels == ["sgd_momentum · seed 1", "sgd_momentum · seed 2"]
    assert all(r.steps == 20 and r.model.name == "mlp" for r in exp.runs)
    # the canonical form round-trips
    assert ExperimentSpec.model_validate_json(exp.model_dump_json()) == exp


def test_experiment_limits_and_shape_errors():
    with pytest.raises(ValidationError) as info:
        ExperimentSpec(base={}, optimizers=[{"name": "sgd"}] * 7, seeds=list(range(7)))
    assert ("seeds",) in error_fields(info.value)
    with pytest.raises(ValidationError) as info:
        ExperimentSpec(runs=[{}] * (MAX_RUNS + 1))
    assert ("runs",) in error_fields(info.value)
    with pytest.raises(ValidationError) as info:
        ExperimentSpec(runs=[{}, {"steps": -1}])
    assert ("runs", 1, "steps") in error_fields(info.value)
    with pytest.raises(ValidationError):
        ExperimentSpec(name="empty")
    with pytest.raises(ValidationError):
        ExperimentSpec(runs=[{}], seeds=[1])


def test_presets_are_valid_and_overridable():
    assert {"smoke", "mnist_autoencoder", "diag_vs_tridiag"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        exp = expand_preset(name)
        assert exp.runs and preset.description
    smoke = expand_preset("smoke")
    assert {r.optimizer.name for r in smoke.runs} == {"kfac", "sgd_momentum"}
    assert all(r.dataset.name == "digits_offline" for r in smoke.runs)
    assert all(r.snapshot_interval and r.snapshot_interval <= r.total_steps() for r in smoke.runs)
    paper = expand_preset("mnist_autoencoder")
    assert {r.optimizer.name for r in paper.runs} == {"kfac", "sgd_momentum", "adam"}
    assert paper.runs[0].layer_dims() == [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    changed = expand_preset("smoke", {"steps": 7, "seeds": [4, 5], "name": "mine"})
    assert changed.name == "mine" and len(changed.runs) == 4
    assert all(r.steps == 7 for r in changed.runs) and {r.seed for r in changed.runs} == {4, 5}
    with pytest.raises(ValidationError) as info:
        expand_preset("smoke", {"stepz": 7})
    assert ("base", "stepz") in error_fields(info.value)
    with pytest.raises(KeyError):
        expand_preset("nope")


def test_queue_follows_device():
    assert queue_for(RunSpec(device="cuda")) == "gpu"
    assert queue_for(RunSpec(device="cpu")) == "cpu"
    assert queue_for(RunSpec(device="auto")) == "cpu"


def test_spec_imports_neither_torch_nor_fastapi():
    assert imported_after(["backend.spec"], ["torch", "fastapi"]) == []


def test_a_base_run_without_optimizers_trains_its_own_optimizer() -> None:
    spec = ExperimentSpec.model_validate({"base": {"optimizer": {"name": "adam"}, "steps": 5}})
    assert [run.optimizer.name for run in spec.runs] == ["adam"]
    assert ExperimentSpec.model_validate({"base": {"steps": 5}}).runs[0].optimizer.name == "kfac"
