"""Synthetic surface defects with pixel masks for the demo set (deterministic given a Generator).

Each drawer takes an HxWx3 float image in [0, 1], a numpy Generator and a donor texture
(for foreign patches), and returns the defective image and its boolean mask. Sizes and
contrasts vary so that some defects are easy and some subtle.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

Drawer = Callable[[np.ndarray, np.random.Generator, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _blend(img: np.ndarray, target: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Mix `target` into `img` with per-pixel weight `alpha` (HxW)."""
    a = alpha[:, :, None]
    return np.clip(img * (1.0 - a) + target * a, 0.0, 1.0)


def _blob(shape: tuple[int, int], rng: np.random.Generator, radius: float) -> np.ndarray:
    """A smooth irregular region (soft alpha in [0, 1]) about `radius` pixels across, at a random place."""
    h, w = shape
    cy, cx = rng.uniform(radius + 8, h - radius - 8), rng.uniform(radius + 8, w - radius - 8)
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = radius * rng.uniform(0.6, 1.3), radius * rng.uniform(0.6, 1.3)
    dist = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    noise = gaussian_filter(rng.standard_normal(shape), sigma=max(radius / 3.0, 2.0))
    noise /= noise.std() + 1e-8
    field = 1.0 - dist + 0.25 * noise
    return np.clip(field / 0.15, 0.0, 1.0)


def _stroke(shape: tuple[int, int], rng: np.random.Generator, width: int, segments: int, length: float) -> np.ndarray:
    """A thin polyline (soft alpha) wandering from a random start."""
    h, w = shape
    canvas = Image.new("L", (w * 2, h * 2), 0)
    draw = ImageDraw.Draw(canvas)
    y, x = rng.uniform(0.2 * h, 0.8 * h), rng.uniform(0.2 * w, 0.8 * w)
    angle = rng.uniform(0, 2 * np.pi)
    points = [(2 * x, 2 * y)]
    for _ in range(segments):
        angle += rng.normal(0.0, 0.35)
        x = float(np.clip(x + np.cos(angle) * length / segments, 4, w - 4))
        y = float(np.clip(y + np.sin(angle) * length / segments, 4, h - 4))
        points.append((2 * x, 2 * y))
    draw.line(points, fill=255, width=2 * width, joint="curve")
    small = canvas.resize((w, h), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float64) / 255.0


def scratch(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Thin bright or dark line."""
    alpha = _stroke(img.shape[:2], rng, int(rng.integers(1, 4)), int(rng.integers(3, 8)), rng.uniform(50, 180))
    contrast = rng.uniform(0.25, 0.7)
    target = np.full_like(img, 0.95 if rng.random() < 0.6 else 0.05)
    alpha = alpha * contrast
    return _blend(img, target, alpha), alpha > 0.5 * contrast


def stain(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smooth irregular colour shift (liquid stain, discolouration)."""
    alpha = _blob(img.shape[:2], rng, rng.uniform(12, 45))
    tint = np.array([rng.uniform(0.55, 1.25), rng.uniform(0.5, 1.1), rng.uniform(0.35, 1.0)])
    strength = rng.uniform(0.45, 1.0)
    return _blend(img, img * tint, alpha * strength), alpha > 0.5


def hole(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Missing material: a dark cavity with a faint rim."""
    alpha = _blob(img.shape[:2], rng, rng.uniform(8, 30))
    depth = rng.uniform(0.05, 0.3)
    cavity = depth + 0.04 * rng.standard_normal(img.shape[:2])[:, :, None]
    out = _blend(img, np.repeat(cavity, 3, axis=2), alpha)
    rim = np.clip(gaussian_filter(alpha, 2.0) - alpha, 0.0, 1.0) * 0.6
    return _blend(out, np.ones_like(img), rim), (alpha > 0.5) | (rim > 0.1)


def cut(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A straight-ish dark slit with a bright lit edge."""
    h, w = img.shape[:2]
    alpha = _stroke((h, w), rng, int(rng.integers(3, 7)), 2, rng.uniform(40, 120))
    edge = np.roll(alpha, shift=(2, 2), axis=(0, 1)) * (1.0 - alpha) * rng.uniform(0.2, 0.5)
    out = _blend(img, np.full_like(img, rng.uniform(0.0, 0.15)), alpha * rng.uniform(0.7, 1.0))
    return _blend(out, np.ones_like(img), edge), (alpha > 0.5) | (edge > 0.1)


def foreign(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A patch of another texture showing through an irregular region."""
    h, w = img.shape[:2]
    alpha = _blob((h, w), rng, rng.uniform(14, 40))
    dy, dx = int(rng.integers(0, donor.shape[0] - h + 1)), int(rng.integers(0, donor.shape[1] - w + 1))
    patch = donor[dy : dy + h, dx : dx + w]
    patch = patch * (img.mean() / max(patch.mean(), 1e-3)) ** rng.uniform(0.3, 1.0)  # partly match brightness
    return _blend(img, np.clip(patch, 0.0, 1.0), alpha), alpha > 0.5


def spots(img: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A cluster of small contamination dots."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(40, h - 40), rng.uniform(40, w - 40)
    alpha = np.zeros((h, w))
    for _ in range(int(rng.integers(3, 12))):
        y, x = cy + rng.normal(0, 18), cx + rng.normal(0, 18)
        r = rng.uniform(1.5, 5.0)
        alpha = np.maximum(alpha, np.clip(r + 0.5 - np.sqrt((yy - y) ** 2 + (xx - x) ** 2), 0.0, 1.0))
    colour = np.array([rng.uniform(0.0, 0.5), rng.uniform(0.0, 0.4), rng.uniform(0.0, 0.3)])
    if rng.random() < 0.3:
        colour = 1.0 - colour
    return _blend(img, np.broadcast_to(colour, img.shape), alpha * rng.uniform(0.6, 1.0)), alpha > 0.5


DEFECTS: dict[str, Drawer] = {
    "scratch": scratch,
    "stain": stain,
    "hole": hole,
    "cut": cut,
    "foreign": foreign,
    "spots": spots,
}
