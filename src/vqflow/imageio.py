"""Image files in, model inputs out, with numpy and Pillow only (no torch), so that the torch
path and the torch-free ONNX inferencer read and preprocess an image the same way.

Every PIL mode is handled explicitly because PIL's own convert("RGB") clips 16-bit and
32-bit images instead of scaling them, and keeps garbage colours under transparent pixels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from vqflow.errors import VQFlowError

ALPHA_BACKGROUND = (0, 0, 0)  # transparent pixels are composited over black
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """Read an image file as RGB (EXIF orientation applied, fully decoded), or raise
    VQFlowError naming the file and the reason."""
    path = os.fspath(path)
    img = open_decoded(path, "image")
    try:
        return to_rgb(img)
    except (OSError, ValueError) as exc:
        raise VQFlowError(f"cannot read image {path}: {exc}; re-save it as PNG or JPEG") from exc


def model_input(
    img: Image.Image,
    size: int | tuple[int, int],
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> np.ndarray:
    """RGB image -> (3, H, W) float32 model input: Lanczos resize (no crop), mean/std normalised.

    (x / 255 - mean) / std as one multiply-add per channel plane: broadcasting over the last
    axis of 3 took 3 ms for a 256 px image, most of predict's reading time."""
    h, w = (size, size) if isinstance(size, int) else size
    planes = np.asarray(img.resize((w, h), Image.Resampling.LANCZOS)).transpose(2, 0, 1)
    scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float64))
    offset = -np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)
    out = np.empty(planes.shape, dtype=np.float32)
    for c in range(3):
        np.multiply(planes[c], np.float32(scale[c]), out=out[c], dtype=np.float32)
        out[c] += np.float32(offset[c])
    return out


def resize_map(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float (H, W) map to width x height (an input's own resolution)."""
    amap = np.ascontiguousarray(amap, dtype=np.float32)
    if amap.shape == (height, width):
        return amap
    img = Image.fromarray(amap, mode="F")
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Return the mask as an HxW bool array: True where any colour channel is > 0."""
    img = open_decoded(os.fspath(path), "mask")
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


def open_decoded(path: str, what: str) -> Image.Image:
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
