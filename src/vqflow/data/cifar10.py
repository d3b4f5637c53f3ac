"""CIFAR-10 loader: the extracted cifar-10-batches-py folder, unified normal-classes protocol.

Pickled batches data_batch_1..5 (training) and test_batch, each a dict with b'data'
(N x 3072 uint8, channel-major 32x32) and b'labels'. Records carry the pixels in memory.
A pickle can run any code while it loads, so the batches are read by an unpickler that only
builds what a genuine batch holds (dicts, lists, strings, numbers, one numpy uint8 array).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from vqflow.data import one_vs_rest
from vqflow.data.checks import require_dir
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError, first_line

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


class NotABatch(pickle.UnpicklingError):
    """The pickle asks for something a genuine CIFAR-10 batch never holds (e.g. a function to call)."""


def _latin1_encode(text: object, encoding: object = "latin1") -> bytes:
    """Stand-in for _codecs.encode: Python 3 protocol-2 pickles store bytes as latin-1 text this way."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise NotABatch(_printable(f"_codecs.encode({type(text).__name__}, {encoding!r})"))
    return text.encode("latin-1")


_RECONSTRUCT = np.empty(0, np.uint8).__reduce__()[0]  # numpy's array rebuilder, whatever module holds it
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the official batches (numpy 1 spelling)
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,  # the same, pickled by numpy 2
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class BatchUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a CIFAR-10 batch needs, so loading runs no foreign code."""

    def find_class(self, module: str, name: str) -> object:
        """The allowed object for (module, name); anything else stops the load."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise NotABatch(_printable(f"{module}.{name}")) from None


def _printable(text: str, limit: int = 80) -> str:
    """`text` fit for a one-line message: escaped if it holds control characters, and cut to `limit`."""
    text = text if text.isprintable() else ascii(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _unpickle(path: Path) -> object:
    """The object pickled in `path`, built by BatchUnpickler (Python 2 strings load as bytes)."""
    with open(path, "rb") as f:
        return BatchUnpickler(f, encoding="bytes").load()


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) int labels of one pickled batch."""
    if not path.is_file():
        raise VQFlowError(f"CIFAR-10 batch {path} is missing; give the extracted cifar-10-batches-py folder")
    fix = "re-extract the official cifar-10-python.tar.gz archive"
    try:
        batch = _unpickle(path)
    except NotABatch as exc:
        raise VQFlowError(
            f"{path} is not a genuine CIFAR-10 batch (its pickle asks for {exc}; refused, nothing was run); {fix}"
        ) from None
    except (OSError, pickle.UnpicklingError, EOFError, TypeError, ValueError, MemoryError) as exc:
        raise VQFlowError(f"cannot read CIFAR-10 batch {path}: {first_line(exc)}; {fix}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise VQFlowError(f"{path} is not a genuine CIFAR-10 batch (no dict with b'data' and b'labels'); {fix}")
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise VQFlowError(f"cannot read CIFAR-10 batch {path}: {first_line(exc)}; {fix}") from exc
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise VQFlowError(f"CIFAR-10 batch {path} has data of shape {data.shape}; expected (N, 3072) with N labels")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels
