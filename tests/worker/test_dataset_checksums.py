"""The published names and MD5 sums of the downloadable datasets' files.

Checked against torchvision's datasets (cifar.py: `filename`, `tgz_md5`, `base_folder` and the
batch names; svhn.py: `split_list`; mnist.py: `resources`), which verify the same files. A
wrong sum would reject every genuine download."""

from worker.zoo import datasets, image_datasets


def test_cifar10_archive_and_batches():
    assert image_datasets.CIFAR10_ARCHIVE == (
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    )
    assert image_datasets.CIFAR10_DIR == "cifar-10-batches-py"
    assert image_datasets.CIFAR10_TRAIN == [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
    ]
    assert image_datasets.CIFAR10_TEST == "test_batch"


def test_svhn_cropped_digits():
    assert image_datasets.SVHN_FILES == {
        "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
        "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    }


def test_mnist_gzipped_idx_files():
    assert datasets.MNIST_FILES == {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }
