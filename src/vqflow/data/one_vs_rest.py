"""The unified normal-classes protocol shared by CIFAR-10 and Fashion-MNIST (UniAD splits)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vqflow.data.sample import Record
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

NUM_CLASSES = 10
DEFAULT_NORMAL = (0, 1, 2, 3, 4)
UNIFIED_SPLITS = ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9), (0, 2, 4, 6, 8), (1, 3, 5, 7, 9))


def check_normal(normal: list[int] | None, fmt: str) -> frozenset[int]:
    """Validated set of normal class ids (default 0-4); at least one class must stay anomalous."""
    ids = list(DEFAULT_NORMAL if normal is None else normal)
    bad = [c for c in ids if not isinstance(c, (int, np.integer)) or not 0 <= int(c) < NUM_CLASSES]
    if bad or not ids:
        raise VQFlowError(f"{fmt}: --normal must list class ids in 0..9, got {ids}")
    chosen = frozenset(int(c) for c in ids)
    if len(chosen) == NUM_CLASSES:
        raise VQFlowError(f"{fmt}: --normal lists all 10 classes; leave at least one as the anomalies")
    return chosen


def check_classes(classes: list[str] | None, cls: str) -> None:
    """These datasets form one evaluation group named `cls`; other names are an error."""
    if classes is None or list(classes) == ["all"]:
        return
    missing = [c for c in classes if c != cls]
    if missing:
        raise VQFlowError(f"class {', '.join(missing)} not found in {cls}; available: {cls}")


def build_splits(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    normal: frozenset[int],
    cls: str,
    train_name: Callable[[int], str],
    test_name: Callable[[int], str],
) -> Splits:
    """Train = training images of normal classes; test = every test image, label 1 if not normal.

    `train_name(i)` / `test_name(i)` give the pseudo path of image i ("<cls>:<file>#<index>").
    """
    train = [
        Record(train_name(int(i)), 0, cls, array=train_images[i])
        for i in np.flatnonzero(np.isin(train_labels, sorted(normal)))
    ]
    test = [
        Record(test_name(i), 0 if int(y) in normal else 1, cls, array=test_images[i]) for i, y in enumerate(test_labels)
    ]
    if not train:
        raise VQFlowError(
            f"{cls}: no training images of normal classes {sorted(normal)} in {train_name(0).split('#')[0]}"
        )
    if not test:
        raise VQFlowError(f"{cls}: no test images in {test_name(0).split('#')[0]}")
    return Splits(train, test, False, frozenset())
