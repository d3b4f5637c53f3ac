"""Input checks shared by the metric functions: bad arrays raise VQFlowError, never a NaN."""

from __future__ import annotations

import numpy as np

from vqflow.errors import VQFlowError


def check_labels_scores(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    """Return (labels as bool, scores as float64) 1-D arrays of equal length, or raise."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores).reshape(-1)
    if y.size == 0:
        raise VQFlowError("labels: empty; pass one 0/1 label per image")
    if y.shape != s.shape:
        raise VQFlowError(f"scores: {s.size} values for {y.size} labels; pass one score per label")
    if y.dtype != bool:
        if not np.issubdtype(y.dtype, np.number) or not np.isin(y, (0, 1)).all():
            raise VQFlowError("labels: values must be 0 (normal) or 1 (anomalous)")
        y = y.astype(bool)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise VQFlowError("scores: must be real numbers")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise VQFlowError("scores: contain NaN or infinity; fix the scoring before evaluating")
    return y, s


def check_masks_maps(masks: object, maps: object) -> tuple[np.ndarray, np.ndarray]:
    """Return (masks as bool (B,H,W), maps as float32/float64 (B,H,W)), or raise.

    A single (H, W) pair is accepted as a batch of one, and (B, 1, H, W) as (B, H, W);
    masks are binarised with > 0.
    """
    m = np.asarray(masks)
    a = np.asarray(maps)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if m.ndim == 2:
        m = m[None]
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise VQFlowError(f"maps: shape {a.shape}; expected (images, height, width)")
    if m.shape != a.shape:
        raise VQFlowError(f"masks: shape {m.shape} differs from maps {a.shape}; resize masks to the map size")
    if a.size == 0:
        raise VQFlowError("maps: empty; pass at least one non-empty map")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise VQFlowError("maps: must be real numbers")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if a.dtype.itemsize <= 2 else np.float64)
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number):
            raise VQFlowError("masks: must be boolean or numeric (anomalous where > 0)")
        m = m > 0
    lo, hi = float(a.min()), float(a.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise VQFlowError("maps: contain NaN or infinity; fix the scoring before evaluating")
    return m, a
