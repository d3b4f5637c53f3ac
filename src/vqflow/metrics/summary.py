"""All seven metrics of one class, and the per-class table with class means (metrics.json)."""

from __future__ import annotations

import numpy as np

from vqflow.errors import VQFlowError
from vqflow.metrics._checks import check_masks_maps
from vqflow.metrics.exact import exact_pixel_metrics, f1_max, image_ap, image_auroc
from vqflow.metrics.streaming import DEFAULT_BINS, PixelMetrics

IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1max")
PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")
METRIC_KEYS = IMAGE_KEYS + PIXEL_KEYS

_CHUNK = 32  # images per histogram update: bounds the temporary memory


def compute_class_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray | None = None,
    maps: np.ndarray | None = None,
    *,
    exact: bool = False,
    num_bins: int = DEFAULT_BINS,
    fpr_limit: float = 0.3,
) -> dict[str, float | None]:
    """The seven metrics of one class; pixel keys are None when masks (or maps) are None.

    Pixel metrics are binned over [min, max] of `maps` (`num_bins` bins, fast, error far
    below 1e-3) unless `exact`. A value is None where undefined, e.g. AUROC of a class
    without anomalous images.
    """
    result: dict[str, float | None] = {
        "image_auroc": image_auroc(labels, scores),
        "image_ap": image_ap(labels, scores),
        "image_f1max": f1_max(labels, scores),
    }
    if masks is None or maps is None:
        result.update(dict.fromkeys(PIXEL_KEYS))
        return result
    m, a = check_masks_maps(masks, maps)
    if len(a) != len(np.asarray(scores).reshape(-1)):
        raise VQFlowError(f"maps: {len(a)} maps for {np.asarray(scores).size} image scores; pass one map per image")
    if exact:
        result.update(exact_pixel_metrics(m, a, fpr_limit))
        return result
    accumulator = PixelMetrics(float(a.min()), float(a.max()), num_bins=num_bins, fpr_limit=fpr_limit)
    for start in range(0, len(a), _CHUNK):
        accumulator.update(m[start : start + _CHUNK], a[start : start + _CHUNK])
    result.update(accumulator.compute())
    return result


def summarize(per_class: dict[str, dict[str, float | None]]) -> dict:
    """{"classes": per_class, "mean": per-key mean over classes ignoring None, "mean_all": mean of the means}.

    A key no class defines has mean None; "mean_all" averages the defined means (None if none).
    """
    keys = list(METRIC_KEYS) + sorted({k for row in per_class.values() for k in row} - set(METRIC_KEYS))
    mean: dict[str, float | None] = {}
    for key in keys:
        values = [row[key] for row in per_class.values() if row.get(key) is not None]
        mean[key] = float(np.mean(values)) if values else None
    defined = [mean[key] for key in METRIC_KEYS if mean[key] is not None]
    return {"classes": per_class, "mean": mean, "mean_all": float(np.mean(defined)) if defined else None}
