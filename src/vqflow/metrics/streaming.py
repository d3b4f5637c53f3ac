"""Binned pixel metrics that accumulate batch by batch in memory independent of the data size.

Scores are quantised into `num_bins` equal bins over a known range [lo, hi]; pixels in one
bin count as ties. The range must be known before the first batch: take the min and max of
all maps in a first pass (or a bound the scoring guarantees, e.g. [0, 1]).
"""

from __future__ import annotations

import numpy as np

from vqflow.errors import VQFlowError
from vqflow.metrics._checks import check_masks_maps
from vqflow.metrics.counts import (
    ap_from_counts,
    area_to_limit,
    auroc_from_counts,
    f1max_from_counts,
    pro_curve_from_counts,
)
from vqflow.metrics.exact import check_fpr_limit
from vqflow.metrics.regions import region_weights

DEFAULT_BINS = 1 << 16


class PixelMetrics:
    """Streaming pixel AUROC, AP, F1-max and AUPRO from score histograms.

    Usage: ``pm = PixelMetrics(lo, hi)``; ``pm.update(masks, maps)`` per batch;
    ``pm.compute()``. Memory: three float64 arrays of `num_bins`. Binning only merges
    thresholds, so the error comes from bins that mix the compared kinds of pixel (the
    AUROC error is at most half the sum over bins of normal share x anomalous share);
    with scores spread over tens of thousands of bins it stays far below 1e-3
    (tested in tests/test_metrics_streaming.py).
    """

    def __init__(self, lo: float, hi: float, num_bins: int = DEFAULT_BINS, fpr_limit: float = 0.3) -> None:
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise VQFlowError(f"PixelMetrics range: ({lo!r}, {hi!r}); pass finite lo <= hi (min and max of the maps)")
        if not (isinstance(num_bins, (int, np.integer)) and 2 <= num_bins <= 1 << 26):
            raise VQFlowError(f"num_bins: {num_bins!r}; use an integer between 2 and 67108864")
        check_fpr_limit(fpr_limit)
        self.lo, self.hi = float(lo), float(hi)
        self.num_bins = int(num_bins)
        self.fpr_limit = float(fpr_limit)
        self._scale = self.num_bins / (self.hi - self.lo) if self.hi > self.lo else 0.0
        self.neg = np.zeros(self.num_bins, dtype=np.float64)
        self.pos = np.zeros(self.num_bins, dtype=np.float64)
        self.region_weight = np.zeros(self.num_bins, dtype=np.float64)
        self.n_regions = 0

    def _bins(self, maps: np.ndarray) -> np.ndarray:
        """Bin index of every score (monotone in the score; equal scores share a bin)."""
        dtype = maps.dtype.type
        if not np.isfinite(dtype(self._scale)):  # a range too narrow for float32 arithmetic
            maps, dtype = maps.astype(np.float64), np.float64
        scaled = maps - dtype(self.lo)
        scaled *= dtype(self._scale)
        bins = scaled.astype(np.int32).ravel()
        np.minimum(bins, self.num_bins - 1, out=bins)
        return bins

    def update(self, masks: np.ndarray, maps: np.ndarray) -> None:
        """Add a batch: masks bool (B, H, W) (or > 0), maps float (B, H, W) within [lo, hi]."""
        m, a = check_masks_maps(masks, maps)
        a_min, a_max = float(a.min()), float(a.max())
        if a_min < self.lo or a_max > self.hi:
            raise VQFlowError(
                f"maps: scores span [{a_min:.6g}, {a_max:.6g}] outside PixelMetrics range "
                f"[{self.lo:.6g}, {self.hi:.6g}]; construct it with the min and max of all maps"
            )
        bins = self._bins(a)
        flat_mask = m.ravel()
        anomalous_bins = bins[flat_mask]
        pos = np.bincount(anomalous_bins, minlength=self.num_bins)
        self.pos += pos
        self.neg += np.bincount(bins, minlength=self.num_bins) - pos
        weights, n_regions = region_weights(m)
        if n_regions:
            self.region_weight += np.bincount(anomalous_bins, weights=weights, minlength=self.num_bins)
            self.n_regions += n_regions

    def compute(self) -> dict[str, float | None]:
        """pixel_auroc, pixel_ap, pixel_f1max, aupro of everything added (None where undefined)."""
        curve = pro_curve_from_counts(self.neg, self.region_weight, self.n_regions)
        return {
            "pixel_auroc": auroc_from_counts(self.neg, self.pos),
            "pixel_ap": ap_from_counts(self.neg, self.pos),
            "pixel_f1max": f1max_from_counts(self.neg, self.pos),
            "aupro": None if curve is None else area_to_limit(curve[0], curve[1], self.fpr_limit),
        }

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Binned (fpr, pro) curve for plots; None without regions or normal pixels."""
        return pro_curve_from_counts(self.neg, self.region_weight, self.n_regions)
