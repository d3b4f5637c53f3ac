"""Read any image file (or in-memory array) as 8-bit RGB, and any mask file as a boolean array.

Every PIL mode is handled explicitly because PIL's own convert("RGB") clips 16-bit and
32-bit images instead of scaling them, and keeps garbage colours under transparent pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vqflow.data.sample import Record
from vqflow.errors import VQFlowError

ALPHA_BACKGROUND = (0, 0, 0)  # transparent pixels are composited over black


def read_image(record_or_path: Record | str | os.PathLike) -> Image.Image:
    """Return the image as an RGB PIL image (EXIF orientation applied, fully decoded)."""
    if isinstance(record_or_path, Record) and record_or_path.array is not None:
        return _array_to_rgb(record_or_path.array, record_or_path.path)
    path = record_or_path.path if isinstance(record_or_path, Record) else os.fspath(record_or_path)
    img = _open_decoded(path, "image")
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise VQFlowError(f"cannot read image {path}: {exc}; re-save it as PNG or JPEG") from exc


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Return the mask as an HxW bool array: True where any colour channel is > 0."""
    img = _open_decoded(os.fspath(path), "mask")
    if img.mode in ("LA", "PA", "RGBA", "RGBa", "La"):
        img = img.convert("RGB") if img.mode in ("RGBA", "RGBa") else img.convert("L")
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB, scaling high bit depths to 0..255."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img).astype(np.int64)
        arr8 = _integer_to_uint8(arr)
        return Image.fromarray(np.repeat(arr8[:, :, None], 3, axis=2), "RGB")
    if mode == "F":
        arr = np.asarray(img).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if arr.size and arr.max() <= 1.0 else 1.0
        arr8 = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr8[:, :, None], 3, axis=2), "RGB")
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette.mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        background = Image.new("RGB", img.size, ALPHA_BACKGROUND)
        background.paste(img, mask=img.getchannel("A"))
        return background
    if mode == "1":
        img = img.convert("L")
    return img.convert("RGB")


def _integer_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale integer pixels to 8 bits by their container range: 8-bit as is, 16-bit / 257."""
    if arr.size == 0 or (arr.min() >= 0 and arr.max() <= 255):
        return arr.astype(np.uint8)
    if arr.min() >= 0 and arr.max() <= 65535:
        return np.rint(arr / 257.0).astype(np.uint8)
    lo, hi = arr.min(), arr.max()  # wider than 16 bits: rescale its own range
    return np.rint((arr - lo) * (255.0 / max(hi - lo, 1))).astype(np.uint8)


def _open_decoded(path: str, what: str) -> Image.Image:
    """Open, fully decode and orient an image file, or raise VQFlowError naming it."""
    if not Path(path).is_file():
        reason = "no such file" if not Path(path).exists() else "not a file"
        raise VQFlowError(f"cannot read {what} {path}: {reason}; check the path or remove it from the list")
    try:
        with Image.open(path) as img:
            img.load()
            oriented = ImageOps.exif_transpose(img)
            oriented.load()
            return oriented if oriented is not img else img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise VQFlowError(
            f"cannot read {what} {path}: {exc}; the file is damaged or not an image, re-save or remove it"
        ) from exc


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
