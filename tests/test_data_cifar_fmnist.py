"""CIFAR-10 python batches and Fashion-MNIST IDX files with the unified normal-classes protocol."""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_trees import cifar_tree, fmnist_tree, write_cifar_batch, write_idx
from tiny_run import tiny_args
from vqflow.cli import main
from vqflow.data import cifar10, fmnist, read_image
from vqflow.errors import VQFlowError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")


class Call:
    """Pickles as the call func(*args): how a crafted pickle runs code the moment it is loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def crafted_batch(kind: str, marker: Path) -> bytes:
    """A protocol-2 pickle that creates `marker` when loaded with plain pickle.load."""
    touch = f"open({str(marker)!r}, 'w').close()"
    calls = {
        "os.system": Call(os.system, f"touch {shlex.quote(str(marker))}"),
        "builtins.exec": Call(builtins.exec, touch),
        "subprocess": Call(subprocess.call, [sys.executable, "-c", touch]),
    }
    if kind == "inside a genuine batch":  # plain pickle.load returns a valid batch: fit would run and exit 0
        data = np.zeros((4, 3072), np.uint8)
        return pickle.dumps({b"data": data, b"labels": [0, 1, 2, 3], b"batch_label": calls["builtins.exec"]}, 2)
    return pickle.dumps(calls[kind], protocol=2)


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


@pytest.mark.parametrize("how", ["py2, numpy 1", "py2, numpy 2", "py3 protocol 2", "py3 default protocol"])
def test_cifar10_genuine_batch_formats_load(tmp_path, how):
    data = np.random.default_rng(1).integers(0, 256, (6, 3072), dtype=np.uint8)
    labels = [9, 0, 3, 3, 7, 1]
    path = tmp_path / "data_batch_1"
    if how.startswith("py2"):  # as the official archive: Python 2 strings, numpy.core (or numpy._core) rebuilder
        write_cifar_batch(path, data, labels, numpy1_names=how.endswith("numpy 1"))
    else:
        protocol = 2 if how == "py3 protocol 2" else pickle.DEFAULT_PROTOCOL  # protocol 2 stores bytes via _codecs
        path.write_bytes(pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}, protocol))
    images, got = cifar10.read_batch(path)
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_array_equal(images, data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "subprocess", "inside a genuine batch"])
def test_cifar10_crafted_batch_runs_no_code(tmp_path, kind):
    root, _ = cifar_tree(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "code_ran"
    (root / "data_batch_2").write_bytes(crafted_batch(kind, marker))
    with pytest.raises(VQFlowError, match=r"data_batch_2 is not a genuine CIFAR-10 batch .*re-extract") as err:
        cifar10.load(str(root), None, None)
    assert not marker.exists()
    assert "\n" not in str(err.value)


def test_cifar10_batch_that_is_no_dict(tmp_path):
    root, _ = cifar_tree(tmp_path / "c")
    (root / "test_batch").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(VQFlowError, match="test_batch is not a genuine CIFAR-10 batch"):
        cifar10.load(str(root), None, None)
    (root / "test_batch").write_bytes(b"\x80\x02}q\x00(U\x04data")  # cut short
    with pytest.raises(VQFlowError, match="cannot read CIFAR-10 batch .*test_batch"):
        cifar10.load(str(root), None, None)


def test_cli_fit_refuses_crafted_batch(tmp_path, capsys):
    root, _ = cifar_tree(tmp_path / "c")
    marker = tmp_path / "code_ran"
    (root / "test_batch").write_bytes(crafted_batch("os.system", marker))
    code = main(["fit", "--data", f"cifar10:{root}", "--out", str(tmp_path / "run"), *tiny_args(1)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not marker.exists()
    assert err.startswith("error: ") and "\n" not in err
    assert f"{root / 'test_batch'} is not a genuine CIFAR-10 batch" in err


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
