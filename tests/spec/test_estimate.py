"""The arithmetic of backend/estimate.py on specs small enough to count by hand (the memory
model against measured peaks is tests/worker/test_estimate_memory.py)."""

from __future__ import annotations

import pytest

from backend.estimate import _layers, estimate, memory_bytes, resource_errors, step_flops
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
    assert [location for location, _ in too_long] == [
        ("runs", 0),
        ("optimizers", 0),
        ("optimizers", 1),
    ]


def test_a_growing_batch_costs_its_mean_size_per_step() -> None:
    growing = {"kind": "exponential", "initial": 10, "growth": 5.0, "maximum": 100}
    run = spec(batch_size=growing)
    sizes = [run.batch_size.size_at(k, 4000) for k in range(1, 51)]
    mean = sum(sizes) / len(sizes)
    assert step_flops(run) / step_flops(spec(batch_size=1)) == pytest.approx(mean, rel=0.02)


def test_the_quadratic_model_reads_a_chain_off_the_training_pass() -> None:
    """α, μ (§7) need J·Δ, J·δ₀ on a quarter of the batch: per direction V ā on every layer and
    W ȧ on all but the first; a model that is not a chain adds the dual pass's primal W a."""
    adaptive, fixed = spec(optimizer={"name": "kfac"}), spec(optimizer={"name": "kfac", "lr": 0.1})
    products = [2 * 65 * 32, 2 * 33 * 10]  # per example, per layer
    tangent = 2 * sum(products) - products[0]
    assert step_flops(adaptive) - step_flops(fixed) == pytest.approx(25 * 2 * tangent)

    def quadratic_cost(model: dict) -> tuple[float, list[int]]:
        """The adaptive step's extra FLOPs, and the layers' products per example."""
        run = {"dataset": "digits8x8", "model": model}
        adaptive = spec(**run, optimizer={"name": "kfc"})
        layers = [2 * layer.positions * layer.shape.parameters for layer in _layers(adaptive)]
        fixed = spec(**run, optimizer={"name": "kfc", "lr": 0.1})
        return step_flops(adaptive) - step_flops(fixed), layers

    # KFC's quadratic model uses the whole batch of 100; batch norm makes the net no chain
    plain = {"name": "convnet", "channels": [4, 8], "pooling": ["max", "avg"]}
    cost, products = quadratic_cost(plain)
    assert cost == pytest.approx(100 * 2 * (2 * sum(products) - products[0]))
    cost, products = quadratic_cost({**plain, "batch_norm": True})
    assert cost == pytest.approx(100 * 2 * (3 * sum(products) - products[0]))


def test_nodes_share_the_batch_and_the_inverses_but_not_rank_zero_s_work() -> None:
    """Each of M workers trains B/M examples and inverts 1/M of the factors; every rank applies
    the inverse; rank 0 alone evaluates."""
    one = spec(optimizer={"name": "kfac"}, eval_interval=10)
    two = spec(optimizer={"name": "kfac"}, eval_interval=10, nodes=2)
    apply = 2 * (65 * 32 * (65 + 32) + 33 * 10 * (33 + 10))
    evaluation = 2 * (65 * 32 + 33 * 10) * 1000 / 10
    shared = step_flops(one) - apply - evaluation
    assert step_flops(two) == pytest.approx(shared / 2 + apply + evaluation)
    assert step_flops(spec(nodes=4)) == pytest.approx(step_flops(spec()) / 4)
    assert step_flops(spec(processes=4)) == pytest.approx(step_flops(spec()))


def test_a_worker_holds_its_ranks_copies_and_their_share_of_the_activations() -> None:
    parameters = 65 * 32 + 33 * 10
    data = 5000 * 64 * 4

    def activations(batch: int) -> int:
        return batch * (64 + 2 * (32 + 10) + 2 * (65 + 32))

    assert memory_bytes(spec(nodes=4)) == data + 4 * (2 * parameters + activations(25))
    assert memory_bytes(spec(processes=3, nodes=2)) == 3 * (
        data + 4 * (2 * parameters + activations(17))  # rank 0 gets ⌈100 / 6⌉ examples
    )
    checkpoint = memory_bytes(spec(processes=2, checkpoint_interval=10))
    assert checkpoint - memory_bytes(spec(processes=2)) == 4 * parameters  # rank 0's alone
