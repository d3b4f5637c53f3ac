"""CIFAR-10 loader: the extracted cifar-10-batches-py folder, unified normal-classes protocol.

Pickled batches data_batch_1..5 (training) and test_batch, each a dict with b'data'
(N x 3072 uint8, channel-major 32x32) and b'labels'. Records carry the pixels in memory.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from vqflow.data import one_vs_rest
from vqflow.data.checks import require_dir
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

CLS = "cifar10"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


def load(root: str | None, classes: list[str] | None, normal: list[int] | None) -> Splits:
    """Train on the normal classes' training images; test on all test images."""
    base = require_dir(root, CLS)
    one_vs_rest.check_classes(classes, CLS)
    chosen = one_vs_rest.check_normal(normal, CLS)
    parts = [read_batch(base / name) for name in TRAIN_BATCHES]
    train_images = np.concatenate([p[0] for p in parts])
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = read_batch(base / TEST_BATCH)
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])

    def train_name(i: int) -> str:
        b = int(np.searchsorted(offsets, i, side="right")) - 1
        return f"{CLS}:{base / TRAIN_BATCHES[b]}#{i - int(offsets[b])}"

    return one_vs_rest.build_splits(
        train_images,
        train_labels,
        test_images,
        test_labels,
        chosen,
        CLS,
        train_name,
        lambda i: f"{CLS}:{base / TEST_BATCH}#{i}",
    )


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int labels of one pickled batch."""
    if not path.is_file():
        raise VQFlowError(f"CIFAR-10 batch {path} is missing; give the extracted cifar-10-batches-py folder")
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as exc:
        raise VQFlowError(f"cannot read CIFAR-10 batch {path}: {exc}; re-extract the archive") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise VQFlowError(f"CIFAR-10 batch {path} has data of shape {data.shape}; expected (N, 3072) with N labels")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels
