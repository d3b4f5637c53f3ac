"""CIFAR-10 python batches and Fashion-MNIST IDX files with the unified normal-classes protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_trees import cifar_tree, fmnist_tree, write_idx
from vqflow.data import cifar10, fmnist, read_image
from vqflow.errors import VQFlowError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_cifar10_splits_pixels_and_paths(tmp_path):
    root, content = cifar_tree(tmp_path / "cifar-10-batches-py")
    normal = [1, 3, 5, 7, 9]
    s = cifar10.load(str(root), None, normal)
    train_labels = np.concatenate([content[f"data_batch_{i}"][1] for i in range(1, 6)])
    assert len(s.train) == int(np.isin(train_labels, normal).sum())
    test_data, test_labels = content["test_batch"]
    assert [r.label for r in s.test] == [0 if y in normal else 1 for y in test_labels]
    assert {r.cls for r in s.train + s.test} == {"cifar10"} and not s.has_masks
    r = s.test[17]
    assert r.path == f"cifar10:{root / 'test_batch'}#17"
    expected = test_data[17].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(read_image(r)), expected)
    first = s.train[-1]  # last normal training image comes from data_batch_5
    name, idx = first.path.split(":", 1)[1].rsplit("#", 1)
    data, _ = content[Path(name).name]
    np.testing.assert_array_equal(first.array, data[int(idx)].reshape(3, 32, 32).transpose(1, 2, 0))


def test_cifar10_default_normal_and_errors(tmp_path):
    root, content = cifar_tree(tmp_path / "c")
    s = cifar10.load(str(root), None, None)
    assert sum(1 - r.label for r in s.test) == int(np.isin(content["test_batch"][1], [0, 1, 2, 3, 4]).sum())
    with pytest.raises(VQFlowError, match="0..9"):
        cifar10.load(str(root), None, [3, 12])
    with pytest.raises(VQFlowError, match="all 10"):
        cifar10.load(str(root), None, list(range(10)))
    (root / "data_batch_3").unlink()
    with pytest.raises(VQFlowError, match="data_batch_3"):
        cifar10.load(str(root), None, None)


def test_fmnist_tiny_idx(tmp_path):
    arrays = fmnist_tree(tmp_path / "fm")
    s = fmnist.load(str(tmp_path / "fm"), None, [0, 2, 4, 6, 8])
    train_labels = arrays["train-labels-idx1-ubyte"]
    assert len(s.train) == int(np.isin(train_labels, [0, 2, 4, 6, 8]).sum())
    test_labels = arrays["t10k-labels-idx1-ubyte"]
    assert [r.label for r in s.test] == [int(y % 2 == 1) for y in test_labels]
    assert {r.cls for r in s.test} == {"fmnist"}
    idx = int(s.train[3].path.rsplit("#", 1)[1])
    np.testing.assert_array_equal(s.train[3].array, arrays["train-images-idx3-ubyte"][idx])
    np.testing.assert_array_equal(np.asarray(read_image(s.test[5]))[:, :, 0], arrays["t10k-images-idx3-ubyte"][5])


def test_fmnist_bad_files(tmp_path):
    fmnist_tree(tmp_path / "fm")
    write_idx(tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(VQFlowError, match="t10k"):
        fmnist.load(str(tmp_path / "fm"), None, None)
    (tmp_path / "fm" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(VQFlowError, match="train-images-idx3-ubyte.gz"):
        fmnist.load(str(tmp_path / "fm"), None, None)


@pytest.mark.skipif(not (REAL_FMNIST / "train-labels-idx1-ubyte.gz").is_file(), reason="Fashion-MNIST not installed")
def test_real_fashion_mnist_counts():
    s = fmnist.load(None, None, [0, 1, 2, 3, 4])
    assert len(s.train) == 5 * 6000 and len(s.test) == 10000
    assert sum(r.label for r in s.test) == 5000
    assert s.train[0].array.shape == (28, 28)
