"""Heatmap overlays with ground-truth contours, and a plain PNG writer."""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vqflow.atomic import atomic_path
from vqflow.errors import VQFlowError

CONTOUR_RGB = (255, 255, 255)
HEATMAP_ALPHA = 0.5


def mask_contour(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary of a binary mask, `width` pixels thick (width 1: mask pixels with a
    4-neighbour outside the mask). The image frame itself is not treated as a contour.
    """
    mask = np.asarray(mask, dtype=bool)
    cross = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(mask, structure=cross, iterations=max(1, width), border_value=1)
    return mask & ~eroded


def contour_width(shape: tuple[int, ...]) -> int:
    """Contour thickness that stays visible when a tile is shown at ~200 px: 1 px per 200 px
    of the short side, rounded up (1 up to 200 px, 2 at 256 px)."""
    return max(1, -(-min(shape[:2]) // 200))


def _resize_map(amap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (H, W) so it lines up with the image."""
    img = Image.fromarray(np.ascontiguousarray(amap, dtype=np.float32))
    return np.asarray(img.resize((shape[1], shape[0]), Image.BILINEAR), dtype=np.float32)


@functools.cache
def turbo_lut() -> np.ndarray:
    """matplotlib's turbo colours (256, 3) in 0..255: a table lookup gives the colours that
    colormap(x) gives (it bins x into 256 entries the same way), without its RGBA floats."""
    return matplotlib.colormaps["turbo"](np.arange(256))[:, :3] * 255.0


def overlay(
    image_uint8: np.ndarray,
    amap: np.ndarray,
    mask: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    width: int | None = None,
) -> np.ndarray:
    """Blend a turbo-coloured anomaly map over an image; draw the mask outline in white.

    `vmin`/`vmax` fix the colour range (pass the same values for images that should be
    compared); by default the map's own min and max are used. `width` is the contour
    thickness in pixels (default: contour_width of the image). Returns (H, W, 3) uint8.
    """
    image = np.asarray(image_uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise VQFlowError(f"overlay: image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape != image.shape[:2]:
        amap = _resize_map(amap, image.shape[:2])
    lo = float(np.nanmin(amap)) if vmin is None else float(vmin)
    hi = float(np.nanmax(amap)) if vmax is None else float(vmax)
    scaled = np.clip((amap - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(amap)
    idx = np.minimum((np.nan_to_num(scaled) * 256).astype(np.intp), 255)  # colormap(x)'s own binning
    weighted = (HEATMAP_ALPHA * turbo_lut()).astype(np.float32)
    out = np.empty(image.shape, dtype=np.uint8)
    for c in range(3):  # per channel: 1-D table lookups, no (H, W, 3) float temporaries
        v = (1.0 - HEATMAP_ALPHA) * image[..., c].astype(np.float32) + np.take(weighted[:, c], idx)
        out[..., c] = np.rint(v, out=v)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != image.shape[:2]:
            raise VQFlowError(f"overlay: mask shape {mask.shape} differs from image {image.shape[:2]}")
        out[mask_contour(mask, contour_width(mask.shape) if width is None else width)] = CONTOUR_RGB
    return out


def with_colorbar(image: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """The image with a turbo colour bar on its right, labelled with the scores at its ends
    (and middle), so a heatmap file says which score a colour stands for."""
    image = np.asarray(image, dtype=np.uint8)
    return np.concatenate([image, _colorbar(image.shape[0], float(vmin), float(vmax))], axis=1)


@functools.lru_cache(maxsize=64)
def _colorbar(h: int, vmin: float, vmax: float) -> np.ndarray:
    """The labelled bar strip for images of height h (cached: predict draws it once per size)."""
    bar_w = max(8, h // 24)
    font = _font(max(10, min(h // 18, 28)))
    labels = [f"{vmax:.3g}", f"{(vmin + vmax) / 2:.3g}", f"{vmin:.3g}"]
    text_w = max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(t, font=font)) for t in labels)
    pad = max(4, bar_w // 2)
    strip = np.full((h, pad + bar_w + pad + text_w + pad, 3), 255, dtype=np.uint8)
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, axis=1)
    strip[:, pad : pad + bar_w] = (matplotlib.colormaps["turbo"](ramp)[..., :3] * 255).round().astype(np.uint8)
    canvas = Image.fromarray(strip)
    draw = ImageDraw.Draw(canvas)
    x = pad + bar_w + pad
    size = getattr(font, "size", 10)
    for text, y in zip(labels, (0, (h - size) // 2, h - size - 2)):
        draw.text((x, max(0, y)), text, fill=(0, 0, 0), font=font)
    strip = np.asarray(canvas)
    strip.setflags(write=False)
    return strip


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W) or (H, W, 3) uint8 array as PNG or JPEG, by the path's suffix (parent
    folders are created). PNG at zlib level 1; JPEG at quality 90 without chroma subsampling,
    which keeps the colour bar's hues and encodes about 20x faster than that PNG."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise VQFlowError(f"save_image: {path}: need (H, W) or (H, W, 3) uint8, got {array.shape} {array.dtype}")
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".jpg", ".jpeg"):
        raise VQFlowError(f"save_image: {path}: the name must end in .png, .jpg or .jpeg")
    with atomic_path(path) as tmp:
        if suffix == ".png":
            Image.fromarray(array).save(tmp, format="PNG", compress_level=1)
        else:
            Image.fromarray(array).save(tmp, format="JPEG", quality=90, subsampling=0)
    return path
