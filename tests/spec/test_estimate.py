"""The arithmetic of backend/estimate.py on specs small enough to count by hand (the memory
model against measured peaks is tests/worker/test_estimate_memory.py)."""

from __future__ import annotations

import pytest

from backend.estimate import estimate, memory_bytes, resource_errors, step_flops
from backend.spec import ExperimentSpec, RunSpec

MLP = {
    "dataset": "synthetic",  # 64 inputs, 10 classes, 4000 + 1000 examples
    "model": {"name": "mlp", "hidden": [32]},
    "optimizer": {"name": "sgd"},
    "batch_size": 100,
    "steps": 50,
    "eval_interval": None,
    "checkpoint_interval": None,
}


def spec(**fields) -> RunSpec:
    return RunSpec.model_validate({**MLP, **fields})


def test_sgd_on_an_mlp_counts_forward_and_backward_passes() -> None:
    parameters = 65 * 32 + 33 * 10
    assert step_flops(spec()) == 3 * 2 * parameters * 100
    # data (float32) + parameters and gradients + activations: input, 2 maps per layer, and
    # the gradients of the widest layer
    activations = 100 * (64 + 2 * (32 + 10) + 2 * (65 + 32))
    assert memory_bytes(spec()) == 5000 * 64 * 4 + 4 * (2 * parameters + activations)


def test_optimizer_state_adds_what_each_optimizer_keeps() -> None:
    parameters = 65 * 32 + 33 * 10
    sgd = memory_bytes(spec())
    assert memory_bytes(spec(optimizer={"name": "sgd_momentum"})) - sgd == 4 * parameters
    assert memory_bytes(spec(optimizer={"name": "adam"})) - sgd == 8 * parameters
    kfac = memory_bytes(spec(optimizer={"name": "kfac"}))
    factors = 2 * (65**2 + 32**2 + 33**2 + 10**2)  # Ā, G and their inverses
    captured = 100 * 2 * (32 + 10)  # g and ĝ of the statistics pass
    assert kfac - sgd == 4 * (factors + parameters + captured)
    deep = {"name": "mlp", "hidden": [32, 32]}
    tridiagonal = memory_bytes(spec(model=deep, optimizer={"name": "kfac_tridiag"}))
    assert tridiagonal > memory_bytes(spec(model=deep, optimizer={"name": "kfac"}))
    assert step_flops(spec(model=deep, optimizer={"name": "kfac_tridiag"})) > step_flops(
        spec(model=deep, optimizer={"name": "kfac"})
    )


def test_float64_checkpoints_snapshots_and_a_growing_batch_are_counted() -> None:
    base = memory_bytes(spec())
    assert memory_bytes(spec(dtype="float64")) > 2 * base - 5000 * 64 * 4
    parameters = 65 * 32 + 33 * 10
    assert memory_bytes(spec(checkpoint_interval=10)) - base == 4 * parameters
    probe = RunSpec.model_validate({**MLP, "snapshot_interval": 10}).probe
    size = probe.parameter_count([64, 32, 10])
    assert memory_bytes(spec(snapshot_interval=10)) - base == 8 * (
        probe.examples * size + 8 * size * size
    )
    growing = {"kind": "exponential", "initial": 10, "growth": 5.0, "maximum": 100}
    assert memory_bytes(spec(batch_size=growing)) == base  # largest at the last step


def test_seconds_follow_the_throughput_and_the_run_length() -> None:
    slow, fast = estimate(spec(), 1e9), estimate(spec(), 2e9)
    assert slow.step_seconds == pytest.approx(2 * fast.step_seconds)
    assert slow.run_seconds == pytest.approx(50 * slow.step_seconds)
    assert slow.memory_bytes == fast.memory_bytes


def test_resource_errors_name_the_run_where_the_request_wrote_it() -> None:
    experiment = ExperimentSpec.model_validate(
        {"runs": [MLP], "base": MLP, "optimizers": [{"name": "sgd"}, {"name": "kfac"}]}
    )
    kfac_memory = memory_bytes(experiment.runs[2])
    problems = resource_errors(experiment, kfac_memory - 1, 1e9, 1e9)
    assert [location for location, _ in problems] == [("optimizers", 1)]
    assert "KFAC_WORKER_MEMORY_BYTES" in problems[0][1]
    assert resource_errors(experiment, kfac_memory, 1e9, 1e9) == []
    too_long = resource_errors(experiment, kfac_memory, 1e-6, 1e9)
    assert [location for location, _ in too_long] == [("runs", 0), ("optimizers", 0),
                                                       ("optimizers", 1)]


def test_a_growing_batch_costs_its_mean_size_per_step() -> None:
    growing = {"kind": "exponential", "initial": 10, "growth": 5.0, "maximum": 100}
    run = spec(batch_size=growing)
    sizes = [run.batch_size.size_at(k, 4000) for k in range(1, 51)]
    mean = sum(sizes) / len(sizes)
    assert step_flops(run) / step_flops(spec(batch_size=1)) == pytest.approx(mean, rel=0.02)
