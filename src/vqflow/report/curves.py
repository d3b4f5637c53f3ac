"""Curve data for the plots: pixel ROC on a deterministic subsample, and PRO curves.

PRO comes from vqflow.metrics.pro_curve, so the plot matches the AUPRO in the table.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from vqflow.metrics import pro_curve as metrics_pro_curve

PIXEL_SAMPLE = 100_000  # pixels per class for the pixel ROC plot
PRO_PIXEL_BUDGET = 600_000  # pixels per class before the PRO plot works on a coarser grid
PLOT_POINTS = 1500  # most points kept per drawn curve
PRO_FPR_LIMIT = 0.3
SEED = 0


def thin_curve(x: np.ndarray, y: np.ndarray, limit: int = PLOT_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` evenly spaced points of a curve (ends kept): drawing stays cheap."""
    if x.size <= limit:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, limit).round().astype(np.int64))
    return x[keep], y[keep]


def pixel_roc(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-level ROC (fpr, tpr) on at most PIXEL_SAMPLE pixels drawn with a fixed seed."""
    flat_maps = maps.reshape(-1)
    flat_masks = masks.reshape(-1)
    if flat_maps.size > PIXEL_SAMPLE:
        idx = np.random.default_rng(SEED).integers(0, flat_maps.size, PIXEL_SAMPLE)
        flat_maps, flat_masks = flat_maps[idx], flat_masks[idx]
    if flat_masks.all() or not flat_masks.any():
        return np.array([]), np.array([])
    fpr, tpr, _ = roc_curve(flat_masks.astype(np.uint8), flat_maps)
    return thin_curve(fpr, tpr)


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """PRO curve (fpr, pro, source): coarser grid above PRO_PIXEL_BUDGET; source says which."""
    stride = 1
    while masks[:, ::stride, ::stride].size > PRO_PIXEL_BUDGET:
        stride += 1
    masks, maps = masks[:, ::stride, ::stride], maps[:, ::stride, ::stride]
    grid = "" if stride == 1 else f", on every {stride}-th row and column"
    curve = metrics_pro_curve(masks, maps)
    fpr, pro = (np.array([]), np.array([])) if curve is None else (np.asarray(curve[0]), np.asarray(curve[1]))
    source = "vqflow.metrics.pro_curve"
    if fpr.size:  # keep the drawn range [0, PRO_FPR_LIMIT] plus one point past it
        end = min(int(np.searchsorted(fpr, PRO_FPR_LIMIT, side="right")) + 1, fpr.size)
        fpr, pro = thin_curve(fpr[:end], pro[:end])
    return fpr, pro, source + grid
