"""Helpers for the data tests: write tiny image trees in each real dataset layout."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_rgb(path: Path, seed: int, size: tuple[int, int] = (24, 20), fmt: str | None = None) -> np.ndarray:
    """Write a random RGB image (size is W, H) and return its pixels."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, format=fmt)
    return arr


def write_mask(
    path: Path, size: tuple[int, int] = (24, 20), box: tuple[int, int, int, int] = (4, 4, 12, 10), value: int = 255
) -> np.ndarray:
    """Write an L mask with `value` inside box (x0, y0, x1, y1); return the boolean mask."""
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return arr > 0


def mvtec_tree(
    root: Path,
    classes: dict[str, dict[str, int]],
    n_train: int = 3,
    masks: bool = True,
    mask_suffix: str = "_mask",
    ext: str = ".png",
) -> Path:
    """root/<cls>/train/good, test/<defect>, ground_truth/<defect>; classes maps cls -> {defect: count}."""
    seed = 0
    for cls, defects in classes.items():
        for i in range(n_train):
            seed += 1
            write_rgb(root / cls / "train" / "good" / f"{i:03d}{ext}", seed)
        for defect, count in defects.items():
            for i in range(count):
                seed += 1
                write_rgb(root / cls / "test" / defect / f"{i:03d}{ext}", seed)
                if masks and defect != "good":
                    write_mask(root / cls / "ground_truth" / defect / f"{i:03d}{mask_suffix}.png")
    return root


def visa_original_tree(root: Path, classes: list[str], n_train: int = 3, n_good: int = 2, n_bad: int = 2) -> Path:
    """The original VisA release: split_csv/1cls.csv and <cls>/Data/{Images,Masks}/..."""
    rows = ["object,split,label,image,mask"]
    seed = 100
    for cls in classes:
        for i in range(n_train + n_good):
            seed += 1
            rel = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            write_rgb(root / rel, seed, fmt="JPEG")
            rows.append(f"{cls},{'train' if i < n_train else 'test'},normal,{rel},")
        for i in range(n_bad):
            seed += 1
            rel = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            write_rgb(root / rel, seed, fmt="JPEG")
            write_mask(root / mrel, value=1)  # VisA masks may hold 0/1
            rows.append(f"{cls},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


class Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing str and bytes as Python 2 byte strings, as the official CIFAR batches hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_string(self, obj: str | bytes) -> None:
        """SHORT_BINSTRING / BINSTRING: what Python 2's cPickle wrote for a str."""
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_string
    dispatch[bytes] = save_py2_string


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], numpy1_names: bool = True) -> None:
    """Write one batch the way the official cifar-10-batches-py files are: a Python 2 protocol-2 pickle of a dict."""
    batch = {
        b"batch_label": f"batch {path.name}".encode(),
        b"labels": labels,
        b"data": data,
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
    }
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(batch)
    raw = buf.getvalue()
    if numpy1_names:  # the official files were written by numpy 1, whose array rebuilder lived in numpy.core
        raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)


def cifar_tree(
    root: Path, per_batch: int = 20, n_test: int = 30
) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Fake cifar-10-batches-py: data_batch_1..5 and test_batch with random pixels and labels."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    content = {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n)]
        write_cifar_batch(root / name, data, labels)
        content[name] = (data, np.array(labels))
    return root, content


def write_idx(path: Path, arr: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (written here independently of the parser)."""
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def fmnist_tree(root: Path, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    """Tiny Fashion-MNIST IDX files; returns the arrays written."""
    rng = np.random.default_rng(3)
    out = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for name, arr in out.items():
        write_idx(root / f"{name}.gz", arr)
    return out
