"""Image tiles with heatmap overlay and colour bar: per-class extremes and the worst mistakes."""

from __future__ import annotations

import html
import os
import re

import numpy as np

from vqflow.report.assets import Assets, jpeg_bytes
from vqflow.report.data import ReportData
from vqflow.report.decisions import Decisions, defect_type, format_score
from vqflow.report.overlay import overlay, with_colorbar

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


class Tiles:
    """Draws tiles of one report: the calibrated heatmap colour range (as `vqflow predict`),
    else one range per class (min to max of its maps), so colours compare within a class."""

    def __init__(self, data: ReportData, assets: Assets, decisions: Decisions | None) -> None:
        self.data, self.assets, self.decisions = data, assets, decisions
        self._ranges: dict[str, tuple[float, float]] = {}

    def colour_range(self, cls: str) -> tuple[float, float] | None:
        """(vmin, vmax) of the heatmap colours for a class's images; None without maps."""
        if self.data.maps is None:
            return None
        if self.data.map_range is not None:
            return float(self.data.map_range[0]), float(self.data.map_range[1])
        if cls not in self._ranges:
            maps = self.data.maps[np.asarray(self.data.classes, dtype=object) == cls]
            self._ranges[cls] = (float(maps.min()), float(maps.max()))
        return self._ranges[cls]

    def image(self, i: int) -> np.ndarray:
        """Image i, with its heatmap, ground-truth outline and a labelled colour bar where maps exist."""
        image = np.asarray(self.data.images(i))
        span = self.colour_range(str(self.data.classes[i]))
        if span is None:
            return _enlarge(image)
        masks = self.data.masks
        mask = masks[i] if masks is not None and masks[i].any() else None
        return with_colorbar(_enlarge(overlay(image, self.data.maps[i], mask, *span)), *span)

    def html(self, i: int) -> str:
        """One tile: the image and, in visible text, class, defect type, score, threshold and verdict."""
        data = self.data
        src = self.assets.src(f"tile_{i:06d}.jpg", jpeg_bytes(self.image(i)))
        truth = "anomalous" if int(data.labels[i]) == 1 else "normal"
        base = html.escape(os.path.basename(str(data.paths[i])))
        kind = defect_type(str(data.paths[i])) or ("defect" if truth == "anomalous" else "normal")
        score = float(data.scores[i])
        lines = [f'<span class="what">{html.escape(str(data.classes[i]))} · {html.escape(kind)}</span>']
        if self.decisions is None:
            lines.append(f'<span class="num">score <b>{format_score(score)}</b> · no threshold</span>')
        else:
            threshold = float(self.decisions.thresholds[i])
            flagged = bool(self.decisions.flagged[i])
            outcome = {(0, 0): "correct", (0, 1): "false alarm", (1, 0): "missed", (1, 1): "caught"}
            result = outcome[(int(truth == "anomalous"), int(flagged))]
            wrong = result in ("false alarm", "missed")
            lines.append(
                f'<span class="num">score <b>{format_score(score, threshold)}</b> · threshold '
                f"{format_score(threshold, score)}</span>"
                f'<span class="verdict{" wrong" if wrong else ""}">verdict: {"anomalous" if flagged else "normal"}'
                f" ({result})</span>"
            )
        return (
            f'<figure class="tile {truth}" data-index="{i}"><img src="{src}" alt="{base}" loading="lazy">'
            f'<figcaption><span class="tag {truth}">{truth}</span>{"".join(lines)}'
            f'<span class="path" title="{html.escape(str(data.paths[i]))}">{base}</span></figcaption></figure>'
        )

    def range_text(self, cls: str) -> str:
        """' · heatmap range a – b' for a class's caption ('' without maps)."""
        span = self.colour_range(cls)
        return "" if span is None else f" · heatmap range {span[0]:.3g} – {span[1]:.3g}"


def class_gallery(tiles: Tiles, name: str, class_index: int, indices: np.ndarray, per_side: int = 4) -> str:
    """This class's highest- and lowest-scored test images as tiles (HTML)."""
    scores = np.asarray(tiles.data.scores, dtype=np.float64)[indices]
    top, bottom = pick_extremes(scores, per_side)
    rows = []
    for label, picks in (("highest scores", top), ("lowest scores", bottom)):
        if picks:
            html_tiles = "".join(tiles.html(int(indices[pos])) for pos in picks)
            rows.append(f'<div class="row-label">{label}</div><div class="tiles">{html_tiles}</div>')
    return (
        f'<div class="gallery"><h3 id="g-{class_index}">{html.escape(name)}'
        f'<span class="sub">{indices.size} images{tiles.range_text(name)}</span></h3>{"".join(rows)}</div>'
    )


def worst_mistakes(labels: np.ndarray, scores: np.ndarray, d: Decisions | None, k: int) -> tuple[list, list]:
    """Positions of the k normals scored furthest above their threshold (highest first) and the k
    defectives furthest below it (lowest first); with one global threshold, simply the score order."""
    labels = np.asarray(labels).astype(int)
    margin = np.asarray(scores, dtype=np.float64) - (0.0 if d is None else d.thresholds)
    position = np.arange(labels.size)
    normal, defective = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    high = normal[np.lexsort((position[normal], -margin[normal]))][:k]
    low = defective[np.lexsort((position[defective], margin[defective]))][:k]
    return [int(i) for i in high], [int(i) for i in low]


def mistakes_gallery(tiles: Tiles, k: int) -> str:
    """The highest-scored normal and the lowest-scored defective test images, over all classes (HTML)."""
    high, low = worst_mistakes(tiles.data.labels, tiles.data.scores, tiles.decisions, k)
    rows = []
    for label, picks, kind in (
        ("highest-scored normal images (false alarms where the verdict is anomalous)", high, "normals"),
        ("lowest-scored defective images (missed where the verdict is normal)", low, "defectives"),
    ):
        if picks:
            body = "".join(tiles.html(i) for i in picks)
            rows.append(f'<div class="row-label">{label}</div><div class="tiles" data-kind="{kind}">{body}</div>')
        else:
            rows.append(f'<p class="note">No {kind[:-1]} test images.</p>')
    return "".join(rows)
