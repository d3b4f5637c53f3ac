"""Image- and pixel-level anomaly metrics (AUROC, AP, F1-max, AUPRO), exact and streaming."""

from vqflow.metrics.exact import (
    aupro,
    exact_pixel_metrics,
    f1_max,
    image_ap,
    image_auroc,
    pixel_ap,
    pixel_auroc,
    pixel_f1max,
    pro_curve,
)
from vqflow.metrics.streaming import DEFAULT_BINS, PixelMetrics
from vqflow.metrics.summary import METRIC_KEYS, compute_class_metrics, summarize

__all__ = [
    "DEFAULT_BINS",
    "METRIC_KEYS",
    "PixelMetrics",
    "aupro",
    "compute_class_metrics",
    "exact_pixel_metrics",
    "f1_max",
    "image_ap",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1max",
    "pro_curve",
    "summarize",
]
