"""The run spec's conv nets and KFC optimizers: torch-free size arithmetic, field errors."""

import pytest
from pydantic import ValidationError

from backend.presets import expand_preset
from backend.spec import (
    KFAC_OPTIMIZERS,
    MAX_PROBE_PARAMETERS,
    ExperimentSpec,
    KFCPreSpec,
    RunSpec,
)


def error_fields(error: ValidationError) -> set[tuple]:
    return {tuple(e["loc"]) for e in error.errors()}


def conv(**fields) -> dict:
    return {"name": "convnet", **fields}


def test_paper_convnet_arithmetic_without_torch():
    spec = RunSpec(dataset="cifar10", model=conv(), optimizer={"name": "kfc_pre"})
    assert spec.model.stages((3, 32, 32)) == [(3, 32, 16, 16), (32, 32, 8, 8), (32, 64, 4, 4)]
    shapes = [tuple(s) for s in spec.layer_shapes()]
    assert shapes == [(75, 32, True), (800, 32, True), (800, 64, True), (1024, 10, True)]
    assert spec.parameter_count() == 76 * 32 + 801 * 32 + 801 * 64 + 1025 * 10
    bn = RunSpec(dataset="digits_offline", model=conv(batch_norm=True, hidden=[20]))
    assert [s.bias for s in bn.layer_shapes()] == [False, False, False, True, True]
    assert bn.layer_shapes()[3].inputs == 64 * 4 * 4  # 28 → 14 → 7 → 4
    expected = 25 * 32 + 800 * 32 + 800 * 64 + 1025 * 20 + 21 * 10 + 2 * (32 + 32 + 64)
    assert bn.parameter_count() == expected
    small = RunSpec(
        dataset="digits8x8", model=conv(width_scale=0.5, pooling=["max", "none", "avg"])
    )
    assert small.model.stages((1, 8, 8)) == [(1, 16, 4, 4), (16, 16, 4, 4), (16, 32, 2, 2)]


def test_probe_counts_output_channels_and_patch_coordinates():
    spec = RunSpec(dataset="cifar10", model=conv(), probe={"units": 4})
    # 4 of the patch coordinates (+ bias) × 4 output units, 4 layers (10 classes: 4 kept)
    assert spec.probe.parameter_count(spec.layer_shapes()) == 4 * (4 + 1) * 4
    assert spec.probe.parameter_count([3, 5, 2]) == (3 + 1) * 4 + (4 + 1) * 2  # widths still work


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"dataset": "synthetic", "model": conv()}, ("model",)),  # no image shape
        ({"model": conv(kernel_size=4)}, ("model", "convnet", "kernel_size")),
        ({"model": conv(pooling=["max"])}, ("model", "convnet", "pooling")),
        ({"model": conv(channels=[1024, 1024])}, ("model",)),  # factor side 1024·25 + 1
        ({"model": conv(), "optimizer": {"name": "kfac_tridiag"}}, ("optimizer",)),
        ({"model": {"name": "mlp"}, "optimizer": {"name": "kfc"}}, ("optimizer",)),
        ({"optimizer": {"name": "kfc_pre"}}, ("optimizer",)),  # the default autoencoder
        (
            {"model": conv(), "optimizer": {"name": "kfc_pre", "lr": 0}},
            ("optimizer", "kfc_pre", "lr"),
        ),
        ({"model": conv(), "probe": {"layers": [4]}}, ("probe",)),
        ({"model": conv(), "probe": {"units": 200}}, ("probe",)),
    ],
)
def test_errors_name_the_field(data, field):
    data = {"dataset": "digits_offline", **data}
    with pytest.raises(ValidationError) as info:
        RunSpec.model_validate(data)
    assert field in error_fields(info.value)


def test_kfc_optimizers_map_to_kfac_keyword_arguments():
    pre = KFCPreSpec().kfac_kwargs()
    assert pre["structure"] == "block_diagonal" and pre["adapt_damping"] is False
    assert pre["lr"] > 0 and pre["momentum"] == 0.9 and pre["damping"] > 0
    spec = RunSpec(model=conv(), optimizer={"name": "kfc"})
    full = spec.optimizer.kfac_kwargs()
    assert full["lr"] is None and full["adapt_damping"] is True
    assert {"kfc", "kfc_pre", "kfac", "kfac_tridiag"} == set(KFAC_OPTIMIZERS)
    assert RunSpec(model=conv(), optimizer={"name": "kfac"}).optimizer.name == "kfac"


def test_comparison_form_checks_optimizers_against_the_base_model():
    with pytest.raises(ValidationError) as info:
        ExperimentSpec(
            base={"model": {"name": "mlp"}}, optimizers=[{"name": "sgd"}, {"name": "kfc"}]
        )
    assert ("optimizers",) in error_fields(info.value)
    assert "optimizers[1]" in str(info.value)
    exp = ExperimentSpec(base={"model": conv()}, optimizers=[{"name": "kfc"}, {"name": "adam"}])
    assert [r.optimizer.name for r in exp.runs] == ["kfc", "adam"]


@pytest.mark.parametrize("name", ["conv_smoke", "cifar10_kfc_pre", "cifar10_batchnorm"])
def test_conv_presets(name):
    exp = expand_preset(name)
    assert all(r.model.name == "convnet" for r in exp.runs)
    assert "kfc_pre" in {r.optimizer.name for r in exp.runs}
    assert "sgd_momentum" in {r.optimizer.name for r in exp.runs}
    for run in exp.runs:
        assert run.probe.parameter_count(run.layer_shapes()) <= MAX_PROBE_PARAMETERS
    if name == "conv_smoke":
        assert all(r.dataset.name == "digits_offline" for r in exp.runs)
        assert all(r.snapshot_interval <= r.total_steps() for r in exp.runs)
    else:
        assert all(r.dataset.name == "cifar10" for r in exp.runs)
    assert expand_preset("cifar10_batchnorm").runs[0].model.batch_norm
