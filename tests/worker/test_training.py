"""The training loop on tiny models: metrics, snapshots, checkpoints and resume, outcomes."""

import functools
import math

import pytest
import torch

from backend.spec import RunSpec
from worker import checkpoints, training
from worker.run_types import MemoryRecorder, RunControls
from worker.training import train


def tiny(optimizer=None, **fields) -> RunSpec:
    data = {
        "dataset": "digits8x8",
        "model": {"name": "mlp", "hidden": [12]},
        "optimizer": optimizer or {"name": "sgd_momentum", "lr": 0.1},
        "batch_size": 32,
        "steps": 24,
        "eval_interval": 8,
        "checkpoint_interval": None,
        "device": "cpu",
        **fields,
    }
    return RunSpec.model_validate(data)


@pytest.fixture
def poll_every_step(monkeypatch):
    monkeypatch.setattr(training, "STOP_CHECK_SECONDS", 0.0)


def stop_after(calls: int):
    count = {"n": 0}

    def should_stop() -> bool:
        count["n"] += 1
        return count["n"] > calls

    return should_stop


def test_metrics_are_recorded():
    recorder = MemoryRecorder()
    result = train(tiny(metric_interval=5), recorder)
    assert result.status == "succeeded" and result.step == 24 and result.reason is None
    series = recorder.series
    assert sorted(series["train_loss"]) == [5, 10, 15, 20, 24]  # every 5 steps and the last
    assert sorted(series["test_loss"]) == [0, 8, 16, 24]
    assert all(0 <= v <= 1 for v in series["test_accuracy"].values())
    assert series["examples_seen"][24] == 24 * 32
    assert all(v > 0 for v in series["step_time"].values())
    assert series["test_loss"][24] < series["test_loss"][0]
    assert recorder.details["data_source"].startswith("sklearn load_digits")
    assert recorder.details["parameters"] == tiny().parameter_count()
    assert recorder.last_step == 24
    assert result.final["train_loss"] == series["train_loss"][24]


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "sgd", "lr": 0.1},
        {"name": "sgd_momentum", "lr": 0.1, "nesterov": True},
        {"name": "adam"},
        {"name": "kfac", "stats_interval": 2, "inverse_interval": 4},
        {"name": "kfac_tridiag", "stats_interval": 2, "inverse_interval": 4},
    ],
)
def test_resume_continues_the_identical_trajectory(tmp_path, poll_every_step, optimizer):
    spec = tiny(optimizer, steps=20, checkpoint_interval=6, iterate_averaging=0.9)
    uninterrupted = MemoryRecorder()
    assert train(spec, uninterrupted).status == "succeeded"

    interrupted = MemoryRecorder()
    controls = RunControls(checkpoint_dir=tmp_path, should_stop=stop_after(15))
    first = train(spec, interrupted, controls)
    assert first.status == "cancelled" and first.step == 15
    assert [p.name for p in checkpoints.checkpoint_files(tmp_path)] == [
        "step-00000012.pt",
        "step-00000006.pt",
    ]
    resumed = MemoryRecorder()
    second = train(spec, resumed, RunControls(checkpoint_dir=tmp_path))
    assert second.status == "succeeded" and second.resumed_from == 12
    assert sorted(resumed.series["train_loss"]) == list(range(13, 21))
    for name in ("train_loss", "test_loss", "test_loss_avg"):
        for step, value in {**interrupted.series[name], **resumed.series[name]}.items():
            assert value == uninterrupted.series[name][step], (name, step)


def test_a_fresh_start_forgets_old_checkpoints(tmp_path):
    spec = tiny(steps=10, checkpoint_interval=4)
    assert train(spec, MemoryRecorder(), RunControls(checkpoint_dir=tmp_path)).status == "succeeded"
    assert checkpoints.checkpoint_files(tmp_path)
    again = train(spec, MemoryRecorder(), RunControls(checkpoint_dir=tmp_path, resume=False))
    assert again.resumed_from is None and again.status == "succeeded"
    resumed = train(spec, MemoryRecorder(), RunControls(checkpoint_dir=tmp_path))
    assert resumed.resumed_from == 8


def test_kfac_records_its_diagnostics():
    recorder = MemoryRecorder()
    result = train(tiny({"name": "kfac"}, steps=10), recorder)
    assert result.status == "succeeded"
    for name in ("damping", "alpha", "mu", "update_norm", "quadratic_model", "rho"):
        assert name in recorder.series, name
    assert len(recorder.series["rho"]) == 2  # λ is adapted every 5 steps (§6.5)
    assert all(math.isfinite(v) for s in recorder.series.values() for v in s.values())


def test_snapshots_cover_the_probe():
    spec = tiny({"name": "kfac"}, steps=8, snapshot_interval=4, probe={"units": 6, "examples": 64})
    recorder = MemoryRecorder()
    assert train(spec, recorder).status == "succeeded"
    assert sorted(recorder.snapshots) == [4, 8]
    payload = recorder.snapshots[8]
    size = spec.probe.parameter_count(spec.layer_dims())
    assert size == 7 * 6 + 7 * 6  # two layers, 6 units kept at every boundary, plus biases
    assert set(payload["matrices"]) == {
        "exact",
        "kronecker",
        "kronecker_inverse",
        "block_diagonal_inverse",
        "block_tridiagonal_inverse",
    }
    assert all(m.shape == (size, size) for m in payload["matrices"].values())
    assert payload["blocks"] == [[0, 42], [42, 84]]
    assert set(payload["spectra"]) == set(payload["extras"]["layer_names"])
    assert payload["relative_errors"]["kronecker_vs_exact"].shape == (2, 2)
    assert payload["extras"]["examples"] == 64 and payload["extras"]["fisher"] == "true"


def test_snapshots_do_not_change_the_trajectory():
    plain, probed = MemoryRecorder(), MemoryRecorder()
    train(tiny({"name": "kfac"}, steps=12), plain)
    train(tiny({"name": "kfac"}, steps=12, snapshot_interval=3), probed)
    assert plain.series["train_loss"] == probed.series["train_loss"]


def test_divergence_is_detected():
    recorder = MemoryRecorder()
    relu_autoencoder = {"name": "autoencoder", "encoder": [8], "activation": "relu", "loss": "mse"}
    spec = tiny({"name": "sgd", "lr": 50.0}, model=relu_autoencoder, steps=200, eval_interval=None)
    result = train(spec, recorder)
    assert result.status == "diverged"
    assert f"at step {result.step}" in result.reason
    assert max(recorder.series["train_loss"]) < result.step  # recorded points are finite
    assert all(math.isfinite(v) for v in recorder.series["train_loss"].values())


def test_cancellation(poll_every_step):
    recorder = MemoryRecorder()
    result = train(tiny(), recorder, RunControls(should_stop=stop_after(3)))
    assert result.status == "cancelled" and result.step == 3
    assert sorted(recorder.series["train_loss"]) == [1, 2, 3]


def test_failures_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("KFAC_DATA_DIR", str(tmp_path))
    result = train(tiny(dataset="mnist", model={"name": "mlp"}), MemoryRecorder())
    assert result.status == "failed" and "FileNotFoundError" in result.reason

    checkpoints.save(tmp_path / "other", 3, {"spec": {"not": "this run"}})
    result = train(tiny(), MemoryRecorder(), RunControls(checkpoint_dir=tmp_path / "other"))
    assert result.status == "failed" and "another spec" in result.reason


def test_unreadable_newest_checkpoint_falls_back(tmp_path):
    checkpoints.save(tmp_path, 1, {"value": torch.ones(2)})
    newest = checkpoints.save(tmp_path, 2, {"value": torch.zeros(2)})
    newest.write_bytes(b"torn")
    assert torch.equal(checkpoints.load_latest(tmp_path)["value"], torch.ones(2))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_exponential_batch_schedule_and_iterate_averaging():
    spec = tiny(
        batch_size={"kind": "exponential", "initial": 8, "growth": 4.0},
        iterate_averaging=0.5,
        steps=12,
    )
    recorder = MemoryRecorder()
    assert train(spec, recorder).status == "succeeded"
    sizes = recorder.series["batch_size"]
    assert sizes[1] == 8 and sizes[12] == min(1438, round(8 * math.exp(11 / 4)))
    assert set(recorder.series["test_loss_avg"]) == {8, 12}


def test_a_background_checkpoint_holds_the_state_at_its_step(tmp_path):
    """The saver copies the state before training goes on: changing the live tensors after
    `save` returns does not reach the file."""
    saver = checkpoints.BackgroundSaver(tmp_path)
    live = {"weights": torch.ones(3), "nested": [torch.zeros(2)], "step": 1}
    saver.save(1, live)
    live["weights"].mul_(5.0)
    live["nested"][0].add_(1.0)
    saver.wait()
    stored = checkpoints.load_latest(tmp_path)
    assert torch.equal(stored["weights"], torch.ones(3))
    assert torch.equal(stored["nested"][0], torch.zeros(2))
    assert stored["step"] == 1


def test_system_metrics_are_recorded_beside_the_loss(monkeypatch: pytest.MonkeyPatch):
    every_step = functools.partial(training.SystemSampler, interval=0.0)
    monkeypatch.setattr(training, "SystemSampler", every_step)
    recorder = MemoryRecorder()
    assert train(tiny(metric_interval=5), recorder).status == "succeeded"
    assert sorted(recorder.series["cpu_percent"]) == [5, 10, 15, 20, 24]
    assert all(value > 1 for value in recorder.series["rss_mb"].values())
