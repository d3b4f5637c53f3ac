"""Per-class galleries: the highest- and lowest-scored test images with heatmap overlays."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import numpy as np

from vqflow.report.data import ReportData
from vqflow.report.overlay import overlay, save_png

MIN_TILE_PIXELS = 128  # tiny images (CIFAR) are enlarged by pixel repetition up to this


def safe_name(text: str) -> str:
    """A file-name-safe version of a class name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "class"


def pick_extremes(scores: np.ndarray, k: int) -> tuple[list[int], list[int]]:
    """Positions of the k highest and (disjoint) k lowest scores; ties broken by position."""
    order = np.lexsort((np.arange(scores.size), -scores))  # descending score, then position
    top = [int(i) for i in order[:k]]
    rest = [int(i) for i in order[k:]]
    bottom = rest[::-1][:k]
    return top, bottom


def _enlarge(image: np.ndarray) -> np.ndarray:
    """Repeat pixels of a tiny image so it is at least MIN_TILE_PIXELS on its short side."""
    factor = -(-MIN_TILE_PIXELS // min(image.shape[:2]))
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1) if factor > 1 else image


def class_gallery(
    name: str,
    class_index: int,
    indices: np.ndarray,
    data: ReportData,
    files_dir: Path,
    rel_dir: str,
    per_side: int = 4,
) -> str:
    """Write this class's tiles as PNGs; return the HTML block that shows them.

    The heatmap colour range is the calibrated one (`data.map_range`, the same as `vqflow
    predict` uses), else shared by the class's tiles (min to max of its maps), so that
    colours compare between images.
    """
    scores = np.asarray(data.scores, dtype=np.float64)[indices]
    top, bottom = pick_extremes(scores, per_side)
    vmin = vmax = None
    if data.maps is not None:
        if data.map_range is not None:
            vmin, vmax = (float(v) for v in data.map_range)
        else:
            class_maps = data.maps[indices]
            vmin, vmax = float(class_maps.min()), float(class_maps.max())
    stem = f"gallery_{class_index:03d}_{safe_name(name)}"
    rows = []
    for label, picks in (("highest scores", top), ("lowest scores", bottom)):
        if not picks:
            continue
        tiles = []
        for pos in picks:
            i = int(indices[pos])
            image = np.asarray(data.images(i))
            if data.maps is not None:
                mask = data.masks[i] if data.masks is not None and data.masks[i].any() else None
                image = overlay(image, data.maps[i], mask, vmin, vmax)
            file_name = f"{stem}_{i:06d}.png"
            save_png(_enlarge(image), files_dir / file_name)
            truth = "anomalous" if int(data.labels[i]) == 1 else "normal"
            base = html.escape(os.path.basename(str(data.paths[i])))
            tiles.append(
                f'<figure class="tile {truth}"><img src="{rel_dir}/{file_name}" alt="{base}" loading="lazy">'
                f'<figcaption><b>{float(data.scores[i]):.4g}</b> <span class="tag {truth}">{truth}</span>'
                f'<span class="path" title="{html.escape(str(data.paths[i]))}">{base}</span></figcaption></figure>'
            )
        rows.append(f'<div class="row-label">{label}</div><div class="tiles">{"".join(tiles)}</div>')
    scale = "" if vmin is None else f" · heatmap range {vmin:.3g} – {vmax:.3g}"
    return (
        f'<div class="gallery"><h3 id="g-{class_index}">{html.escape(name)}'
        f'<span class="sub">{indices.size} images{scale}</span></h3>{"".join(rows)}</div>'
    )
