"""Fashion-MNIST loader: IDX files (optionally gzipped), unified normal-classes protocol.

Default root is Debian's /usr/share/datasets/fashion-mnist with train-images-idx3-ubyte.gz,
train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from vqflow.data import one_vs_rest
from vqflow.data.checks import require_dir
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

CLS = "fmnist"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
IDX_UBYTE = 0x08


def load(root: str | None, classes: list[str] | None, normal: list[int] | None) -> Splits:
    """Train on the normal classes' training images; test on all t10k images."""
    base = require_dir(root or DEFAULT_ROOT, CLS)
    one_vs_rest.check_classes(classes, CLS)
    chosen = one_vs_rest.check_normal(normal, CLS)
    sources = {}
    arrays = {}
    for split in ("train", "t10k"):
        img_path = find_idx(base, f"{split}-images-idx3-ubyte")
        lbl_path = find_idx(base, f"{split}-labels-idx1-ubyte")
        images, labels = read_idx(img_path, 3), read_idx(lbl_path, 1)
        if len(images) != len(labels):
            raise VQFlowError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
        sources[split] = img_path
        arrays[split] = (images, labels.astype(np.int64))
    return one_vs_rest.build_splits(
        *arrays["train"],
        *arrays["t10k"],
        chosen,
        CLS,
        lambda i: f"{CLS}:{sources['train']}#{i}",
        lambda i: f"{CLS}:{sources['t10k']}#{i}",
    )


def find_idx(base: Path, name: str) -> Path:
    """The IDX file `name`, gzipped or not, in `base`."""
    for candidate in (base / f"{name}.gz", base / name):
        if candidate.is_file():
            return candidate
    raise VQFlowError(f"Fashion-MNIST file {base / (name + '.gz')} is missing; give the folder with the IDX files")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file: 2 zero bytes, type 0x08, ndim, big-endian int32 dims, data."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise VQFlowError(f"cannot read IDX file {path}: {exc}; re-download it") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or raw[3] != ndim:
        raise VQFlowError(f"{path} is not a {ndim}-d unsigned-byte IDX file; check the file")
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise VQFlowError(f"IDX file {path} holds {len(raw) - header} bytes of data, expected {expected} for {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)
