"""Conv nets and image datasets of the zoo, and conv runs through the training loop."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

from backend.datafiles import DataUnavailable
from backend.datasets import CIFAR10, CIFAR10_DIR, CIFAR10_TRAIN
from backend.spec import DATASETS, DatasetSpec, RunSpec
from worker.run_types import MemoryRecorder
from worker.training import train
from worker.zoo import datasets, image_datasets
from worker.zoo.datasets import load_dataset
from worker.zoo.models import build_model, count_parameters, kfac_layers


@pytest.mark.parametrize(
    "data",
    [
        {"dataset": "cifar10", "model": {"name": "convnet"}},
        {"dataset": "svhn", "model": {"name": "convnet", "batch_norm": True, "hidden": [16]}},
        {"dataset": "digits_offline", "model": {"name": "convnet", "init": "glorot"}},
        {"dataset": "digits8x8", "model": {"name": "convnet", "pooling": ["max", "none", "avg"]}},
    ],
)
def test_convnets_match_the_spec_arithmetic(data):
    spec = RunSpec.model_validate(data)
    model = build_model(spec)
    assert count_parameters(model) == spec.parameter_count()
    shapes = [
        (m.weight[0].numel(), m.weight.shape[0], m.bias is not None) for m in kfac_layers(model)
    ]
    assert shapes == [tuple(s) for s in spec.layer_shapes()]
    norms = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == (3 if spec.model.batch_norm else 0)
    for norm in norms:  # to_empty leaves garbage: BN must be reset explicitly
        assert torch.equal(norm.running_var, torch.ones_like(norm.running_var))
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
    out = model(torch.rand(2, *spec.dataset.info.image_shape))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_convnet_is_deterministic_per_seed():
    spec = RunSpec(dataset="digits8x8", model={"name": "convnet", "channels": [4, 4, 4]}, seed=2)
    a, b = build_model(spec), build_model(spec)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
    conv = kfac_layers(a)[1]  # He: variance 2 / (4 · 25)
    assert 0.5 < float(conv.weight.detach().var() * 4 * 25 / 2) < 1.5


def test_image_view_of_the_offline_digits():
    data = load_dataset(DatasetSpec(name="digits_offline"), images=True)
    assert data.train_x.shape == (4000, 1, 28, 28) and data.test_x.shape == (1000, 1, 28, 28)
    flat = load_dataset(DatasetSpec(name="digits_offline"))
    assert torch.equal(data.train_x.reshape(4000, -1), flat.train_x)
    with pytest.raises(ValueError, match="image"):
        load_dataset(DatasetSpec(name="synthetic"), images=True)


def fake_cifar(directory, counts=(3, 3, 3, 3, 3, 4)):
    """Six pickled batches in the python version's format; returns the expected arrays."""
    rng = np.random.default_rng(0)
    folder = directory / CIFAR10_DIR
    folder.mkdir(parents=True)
    arrays = []
    for name, count in zip([*CIFAR10_TRAIN, "test_batch"], counts, strict=True):
        data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, count).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
        arrays.append((data, labels))
    return arrays


def test_cifar10_reads_the_python_batches(tmp_path):
    arrays = fake_cifar(tmp_path)
    (train_x, train_y), (test_x, test_y) = image_datasets.read_cifar10(tmp_path)
    assert train_x.shape == (15, 3072) and test_x.shape == (4, 3072)
    assert np.array_equal(train_x[3:6], arrays[1][0]) and test_y.tolist() == arrays[5][1]
    data = datasets._load("cifar10", False, tmp_path)
    images = data.train_x.reshape(-1, 3, 32, 32)
    expected = arrays[0][0][0].reshape(3, 32, 32)[0, 0, 1] / 255.0  # red plane first
    assert float(images[0, 0, 0, 1]) == pytest.approx(expected)


def test_cifar10_download_needs_opt_in_mirror_and_checksum(tmp_path, monkeypatch):
    monkeypatch.delenv("KFAC_CIFAR10_MIRROR", raising=False)
    with pytest.raises(FileNotFoundError, match="KFAC_DATA_DIR"):
        image_datasets.read_cifar10(tmp_path / "data")
    with pytest.raises(FileNotFoundError, match="KFAC_CIFAR10_MIRROR"):
        image_datasets.read_cifar10(tmp_path / "data", download=True)
    source, mirror = tmp_path / "source", tmp_path / "mirror"
    fake_cifar(source)
    mirror.mkdir()
    (declared,) = CIFAR10.files
    archive = mirror / declared.name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / CIFAR10_DIR, arcname=CIFAR10_DIR)
    monkeypatch.setenv("KFAC_CIFAR10_MIRROR", mirror.as_uri())
    with pytest.raises(DataUnavailable, match="MD5"):  # not the published archive
        image_datasets.read_cifar10(tmp_path / "data", download=True)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(CIFAR10, "files", (declared.model_copy(update={"md5": md5}),))
    (train_x, _), _ = image_datasets.read_cifar10(tmp_path / "data", download=True)
    assert train_x.shape == (15, 3072)


def test_svhn_reads_the_mat_files(tmp_path):
    rng = np.random.default_rng(1)
    expected = {}
    for name, count in (("train_32x32.mat", 5), ("test_32x32.mat", 3)):
        x = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
        y = rng.integers(1, 11, (count, 1)).astype(np.uint8)
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"X": x, "y": y})
        (tmp_path / name).write_bytes(buffer.getvalue())
        expected[name] = (x, y)
    (train_x, train_y), (test_x, test_y) = image_datasets.read_svhn(tmp_path)
    x, y = expected["train_32x32.mat"]
    assert train_x.shape == (5, 3072) and test_x.shape == (3, 3072)
    assert np.array_equal(train_x[2].reshape(3, 32, 32), np.transpose(x[:, :, :, 2], (2, 0, 1)))
    assert train_y.tolist() == (y.reshape(-1) % 10).tolist()  # label 10 is the digit 0
    with pytest.raises(FileNotFoundError, match="KFAC_SVHN_MIRROR"):
        image_datasets.read_svhn(tmp_path / "empty")
    assert DATASETS["svhn"].image_shape == (3, 32, 32)


def tiny_conv(optimizer, **fields) -> RunSpec:
    data = {
        "dataset": "digits8x8",
        "model": {"name": "convnet", "channels": [4, 4, 8], "kernel_size": 3},
        "optimizer": optimizer,
        "batch_size": 32,
        "steps": 8,
        "eval_interval": 4,
        "checkpoint_interval": None,
        "device": "cpu",
        **fields,
    }
    return RunSpec.model_validate(data)


@pytest.mark.parametrize("optimizer", [{"name": "kfc_pre"}, {"name": "kfc", "damping_interval": 2}])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_conv_runs_train_and_snapshot(optimizer, batch_norm):
    model = {"name": "convnet", "channels": [4, 4, 8], "kernel_size": 3, "batch_norm": batch_norm}
    spec = tiny_conv(
        optimizer, model=model, snapshot_interval=8, probe={"units": 4, "examples": 16}
    )
    recorder = MemoryRecorder()
    result = train(spec, recorder)
    assert result.status == "succeeded", result.reason
    assert all(np.isfinite(list(recorder.series["train_loss"].values())))
    assert set(recorder.series["test_accuracy"]) == {0, 4, 8}
    payload = recorder.snapshots[8]
    size = spec.probe.parameter_count(spec.layer_shapes())
    assert all(m.shape == (size, size) for m in payload["matrices"].values())
    assert len(payload["blocks"]) == 4 and payload["extras"]["layer_names"][0] == "0"
    assert all(np.isfinite(m).all() for m in payload["matrices"].values())
