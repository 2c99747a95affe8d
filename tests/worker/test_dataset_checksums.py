"""The published names and MD5 sums of the downloadable datasets' files, as declared in
backend/datasets.py.

Checked against torchvision's datasets (cifar.py: `filename`, `tgz_md5`, `base_folder` and the
batch names; svhn.py: `split_list`; mnist.py: `resources`), which verify the same files. A
wrong sum would reject every genuine download."""

from backend.datasets import CIFAR10, MNIST, SVHN


def sums(info):
    return {file.name: file.md5 for file in info.files}


def test_cifar10_archive_and_batches():
    assert sums(CIFAR10) == {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}
    (archive,) = CIFAR10.files
    assert archive.unpack and archive.in_place == (
        "cifar-10-batches-py/data_batch_1",
        "cifar-10-batches-py/data_batch_2",
        "cifar-10-batches-py/data_batch_3",
        "cifar-10-batches-py/data_batch_4",
        "cifar-10-batches-py/data_batch_5",
        "cifar-10-batches-py/test_batch",
    )


def test_svhn_cropped_digits():
    assert sums(SVHN) == {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    }


def test_mnist_gzipped_idx_files():
    assert sums(MNIST) == {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
