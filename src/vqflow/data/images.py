"""Read a Record (file or in-memory array) as 8-bit RGB; masks as boolean arrays.

The file reading itself lives in the torch-free `vqflow.imageio` (shared with the ONNX
inferencer); this module adds the in-memory arrays of CIFAR-10 and Fashion-MNIST records.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from vqflow.data.sample import Record
from vqflow.errors import VQFlowError
from vqflow.imageio import read_mask, read_rgb, to_rgb

__all__ = ["read_image", "read_mask", "to_rgb"]


def read_image(record_or_path: Record | str | os.PathLike) -> Image.Image:
    """Return the image as an RGB PIL image (EXIF orientation applied, fully decoded)."""
    if isinstance(record_or_path, Record) and record_or_path.array is not None:
        return _array_to_rgb(record_or_path.array, record_or_path.path)
    return read_rgb(record_or_path.path if isinstance(record_or_path, Record) else record_or_path)


def _array_to_rgb(arr: np.ndarray, path: str) -> Image.Image:
    """Wrap an in-memory uint8 HxW or HxWx3 array as an RGB image."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise VQFlowError(
            f"cannot read image {path}: in-memory array must be uint8 HxW or HxWx3, got {arr.dtype} {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
