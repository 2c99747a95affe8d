"""CIFAR-10 and SVHN from their standard files, for the KFC paper's experiments (§6).

- `cifar10`: the python version, `cifar-10-batches-py/{data_batch_1..5, test_batch}` in the
  data directory (pickles of uint8 rows R·G·B, 1024 each); with `dataset.download` and
  `KFAC_CIFAR10_MIRROR` (a base URL holding `cifar-10-python.tar.gz`) the archive is fetched,
  checked against its published MD5 and unpacked.
- `svhn`: the cropped digits, `train_32x32.mat` and `test_32x32.mat` (X of shape
  (32, 32, 3, N), y in 1..10 with 10 for the digit 0), read with scipy.io.loadmat — scipy is
  needed and a clear error says so; download likewise from `KFAC_SVHN_MIRROR`.

Images are returned flat in channel-major order (C·H·W), scaled to [0, 1], like every dataset
of `worker.zoo.datasets`, whose `load_dataset(..., images=True)` gives them the (N, C, H, W)
shape that conv nets take.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from backend import datafiles
from backend.datasets import CIFAR10, CIFAR10_DIR, CIFAR10_TEST, CIFAR10_TRAIN, SVHN

Split = tuple[np.ndarray, np.ndarray]  # (uint8 images (N, C·H·W), int64 labels (N,))


def read_cifar10(data_dir: Path, *, download: bool = False) -> tuple[Split, Split]:
    """(train, test) of CIFAR-10 from `data_dir`/cifar-10-batches-py (the files and the
    archive they come from: backend/datasets.py)."""
    datafiles.ensure("cifar10", CIFAR10, data_dir, download)
    folder = data_dir / CIFAR10_DIR
    train = [_cifar_batch(folder / name) for name in CIFAR10_TRAIN]
    images, labels = zip(*train, strict=True)
    return (np.concatenate(images), np.concatenate(labels)), _cifar_batch(folder / CIFAR10_TEST)


def _cifar_batch(path: Path) -> Split:
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3 * 32 * 32)
    return images, np.asarray(batch[b"labels"], dtype=np.int64)


def read_svhn(data_dir: Path, *, download: bool = False) -> tuple[Split, Split]:
    """(train, test) of SVHN's cropped digits from the two .mat files in `data_dir`."""
    try:
        from scipy.io import loadmat
    except ImportError as error:
        raise ImportError("reading SVHN's .mat files needs scipy: pip install scipy") from error
    datafiles.ensure("svhn", SVHN, data_dir, download)
    splits = []
    for file in SVHN.files:
        path = data_dir / file.name
        mat = loadmat(path)
        images = np.transpose(mat["X"], (3, 2, 0, 1)).reshape(len(mat["y"]), -1)  # N, C·H·W
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10  # label 10 is digit 0
        splits.append((np.ascontiguousarray(images, dtype=np.uint8), labels))
    return splits[0], splits[1]
