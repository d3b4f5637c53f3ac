"""Exact image- and pixel-level metrics: every distinct score is a threshold."""

from __future__ import annotations

import numpy as np

from vqflow.errors import VQFlowError
from vqflow.metrics._checks import check_labels_scores, check_masks_maps
from vqflow.metrics.counts import (
    ap_from_counts,
    area_to_limit,
    auroc_from_counts,
    f1max_from_counts,
    pro_curve_from_counts,
)
from vqflow.metrics.regions import region_weights


def _level_counts(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct score (ascending): negatives, positives, and each item's level index."""
    _, level = np.unique(scores, return_inverse=True)
    level = level.reshape(-1)
    n_levels = int(level.max()) + 1
    pos = np.bincount(level[positive], minlength=n_levels).astype(np.float64)
    neg = np.bincount(level, minlength=n_levels) - pos
    return neg, pos, level


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Image-level ROC AUC; None when the labels hold only one class (AUROC is undefined)."""
    y, s = check_labels_scores(labels, scores)
    neg, pos, _ = _level_counts(s, y)
    return auroc_from_counts(neg, pos)


def image_ap(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Image-level average precision; None when there is no anomalous image."""
    y, s = check_labels_scores(labels, scores)
    neg, pos, _ = _level_counts(s, y)
    return ap_from_counts(neg, pos)


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Maximum F1 over all thresholds of the precision-recall curve; None without anomalies."""
    y, s = check_labels_scores(labels, scores)
    neg, pos, _ = _level_counts(s, y)
    return f1max_from_counts(neg, pos)


def _pixel_counts(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, a = check_masks_maps(masks, maps)
    neg, pos, _ = _level_counts(a.ravel(), m.ravel())
    return neg, pos


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Pixel-level ROC AUC over all pixels of all images; None if no pixel (or every pixel) is anomalous."""
    return auroc_from_counts(*_pixel_counts(masks, maps))


def pixel_ap(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Pixel-level average precision; None when no pixel is anomalous."""
    return ap_from_counts(*_pixel_counts(masks, maps))


def pixel_f1max(masks: np.ndarray, maps: np.ndarray) -> float | None:
    """Pixel-level maximum F1 over all thresholds; None when no pixel is anomalous."""
    return f1max_from_counts(*_pixel_counts(masks, maps))


def _exact_pixel_counts(m: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per distinct score: normal pixels, anomalous pixels, summed 1/|region|; and the region count."""
    weights, n_regions = region_weights(m)
    flat_mask = m.ravel()
    neg, pos, level = _level_counts(a.ravel(), flat_mask)
    region_weight = np.bincount(level[flat_mask], weights=weights, minlength=len(neg))
    return neg, pos, region_weight, n_regions


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact PRO curve (fpr on normal pixels, mean per-region overlap), from (0,0) to (1,1).

    None when there is no anomalous region or no normal pixel.
    """
    neg, _, region_weight, n_regions = _exact_pixel_counts(*check_masks_maps(masks, maps))
    return pro_curve_from_counts(neg, region_weight, n_regions)


def exact_pixel_metrics(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> dict[str, float | None]:
    """pixel_auroc, pixel_ap, pixel_f1max and aupro, exact, sorting the scores only once."""
    check_fpr_limit(fpr_limit)
    neg, pos, region_weight, n_regions = _exact_pixel_counts(*check_masks_maps(masks, maps))
    curve = pro_curve_from_counts(neg, region_weight, n_regions)
    return {
        "pixel_auroc": auroc_from_counts(neg, pos),
        "pixel_ap": ap_from_counts(neg, pos),
        "pixel_f1max": f1max_from_counts(neg, pos),
        "aupro": None if curve is None else area_to_limit(curve[0], curve[1], fpr_limit),
    }


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Area under the PRO curve from FPR 0 to `fpr_limit`, divided by `fpr_limit` (exact).

    None when there is no anomalous region or no normal pixel.
    """
    check_fpr_limit(fpr_limit)
    curve = pro_curve(masks, maps)
    return None if curve is None else area_to_limit(curve[0], curve[1], fpr_limit)


def check_fpr_limit(fpr_limit: float) -> None:
    """Raise unless 0 < fpr_limit <= 1."""
    if not (isinstance(fpr_limit, (int, float)) and 0.0 < float(fpr_limit) <= 1.0):
        raise VQFlowError(f"fpr_limit: {fpr_limit!r}; use a number in (0, 1], e.g. 0.3")
