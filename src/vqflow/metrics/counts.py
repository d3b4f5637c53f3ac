"""Ranking metrics from per-threshold counts: one code path for exact and binned evaluation.

Input is one entry per score level in ascending order (a distinct score for exact metrics,
a histogram bin for binned ones): how many negatives and positives sit at that level.
Entries at the same level are ties; thresholds are "score >= level".
"""

from __future__ import annotations

import numpy as np


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under the polyline (x, y) by the trapezoid rule (numpy-version independent)."""
    if len(x) < 2:
        return 0.0
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) * 0.5)


def _descending_cumulative(neg: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (false, true) positives for thresholds from high to low, empty levels dropped."""
    keep = (neg + pos) > 0
    fp = np.cumsum(neg[keep][::-1], dtype=np.float64)
    tp = np.cumsum(pos[keep][::-1], dtype=np.float64)
    return fp, tp


def auroc_from_counts(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """Area under the ROC curve (ties as straight segments); None without both classes."""
    fp, tp = _descending_cumulative(neg, pos)
    if len(fp) == 0 or fp[-1] <= 0 or tp[-1] <= 0:
        return None
    fpr = np.concatenate(([0.0], fp / fp[-1]))
    tpr = np.concatenate(([0.0], tp / tp[-1]))
    return _unit(trapezoid(tpr, fpr))


def ap_from_counts(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """Average precision, sum of (recall step x precision) as scikit-learn; None without positives."""
    fp, tp = _descending_cumulative(neg, pos)
    if len(tp) == 0 or tp[-1] <= 0:
        return None
    precision = tp / (tp + fp)
    recall_step = np.diff(np.concatenate(([0.0], tp))) / tp[-1]
    return _unit(float(np.sum(recall_step * precision)))


def f1max_from_counts(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """Largest F1 over all thresholds; None without positives (F1 is 0/0 there)."""
    fp, tp = _descending_cumulative(neg, pos)
    if len(tp) == 0 or tp[-1] <= 0:
        return None
    f1 = 2.0 * tp / (tp + fp + tp[-1])
    return _unit(float(f1.max()))


def pro_curve_from_counts(
    neg: np.ndarray, region_weight: np.ndarray, n_regions: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, pro) from (0, 0) to (1, 1); `region_weight` sums 1/|region| per level.

    Per-region overlap is linear in the pixels, so the mean overlap over regions at a
    threshold is the weight above it divided by the number of regions.
    None when there is no region or no normal pixel.
    """
    fp, w = _descending_cumulative(neg, region_weight)
    if n_regions <= 0 or len(fp) == 0 or fp[-1] <= 0:
        return None
    fpr = np.concatenate(([0.0], fp / fp[-1]))
    pro = np.concatenate(([0.0], np.minimum(w / n_regions, 1.0)))
    fpr[-1] = 1.0
    pro[-1] = 1.0  # every region is fully covered at the lowest threshold
    return fpr, pro


def area_to_limit(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Area under (fpr, pro) from 0 to fpr_limit (pro interpolated there), divided by fpr_limit."""
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:k], pro[:k]
    if k < len(fpr) and x[-1] < fpr_limit:
        x0, x1, y0, y1 = fpr[k - 1], fpr[k], pro[k - 1], pro[k]
        y_at = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
        x = np.concatenate((x, [fpr_limit]))
        y = np.concatenate((y, [y_at]))
    return _unit(trapezoid(y, x) / fpr_limit)


def _unit(value: float) -> float:
    """Clamp rounding noise so that every reported metric lies in [0, 1]."""
    return float(min(1.0, max(0.0, value)))
