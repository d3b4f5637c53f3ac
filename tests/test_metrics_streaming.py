"""Binned, streaming pixel metrics against the exact ones."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from vqflow.errors import VQFlowError
from vqflow.metrics import PixelMetrics, aupro, compute_class_metrics, pixel_ap, pixel_auroc, pixel_f1max

KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1max", "aupro")


def realistic_case(seed: int, n: int = 12, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Smooth noisy maps, elliptic defects on two thirds of the images, higher scores there."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=bool)
    for k in range(n):
        if k % 3:
            for _ in range(rng.integers(1, 3)):
                cy, cx = rng.uniform(8, size - 8, 2)
                ry, rx = rng.uniform(2, 9, 2)
                masks[k] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 2, 2))
    maps = (noise * 5 + 1.5 * ndimage.gaussian_filter(masks.astype(float), sigma=(0, 3, 3))).astype(np.float32)
    return masks, maps


def exact_values(masks: np.ndarray, maps: np.ndarray) -> dict:
    return {
        "pixel_auroc": pixel_auroc(masks, maps),
        "pixel_ap": pixel_ap(masks, maps),
        "pixel_f1max": pixel_f1max(masks, maps),
        "aupro": aupro(masks, maps),
    }


@pytest.mark.parametrize("seed", range(3))
def test_binned_error_is_below_1e3(seed: int) -> None:
    masks, maps = realistic_case(seed)
    pm = PixelMetrics(float(maps.min()), float(maps.max()))
    for start in range(0, len(maps), 5):  # uneven batches
        pm.update(masks[start : start + 5], maps[start : start + 5])
    got, want = pm.compute(), exact_values(masks, maps)
    assert want["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-9)
    for key in KEYS:
        assert abs(got[key] - want[key]) < 1e-3, key


def test_coarse_bins_have_larger_but_bounded_error() -> None:
    masks, maps = realistic_case(5)
    pm = PixelMetrics(float(maps.min()), float(maps.max()), num_bins=64)
    pm.update(masks, maps)
    got, want = pm.compute(), exact_values(masks, maps)
    # bound from the docstring: AUROC error <= 0.5 * sum over bins of normal share x anomalous share
    bound = 0.5 * np.sum(pm.neg / pm.neg.sum() * pm.pos / pm.pos.sum())
    assert abs(got["pixel_auroc"] - want["pixel_auroc"]) <= bound + 1e-12


def test_one_bin_per_distinct_score_is_exact() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((3, 10, 10)) > 0.7
    masks[2] = False
    maps = rng.integers(0, 10, masks.shape).astype(np.float64) + 2 * masks
    pm = PixelMetrics(0.0, 11.0, num_bins=12)  # bin k holds exactly the score k
    pm.update(masks[:1], maps[:1])
    pm.update(masks[1:], maps[1:])
    got, want = pm.compute(), exact_values(masks, maps)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_constant_maps_and_empty_masks() -> None:
    masks = np.zeros((3, 6, 6), dtype=bool)
    masks[1, 2:4, 2:4] = True
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    pm = PixelMetrics(0.5, 0.5)
    pm.update(masks, maps)
    got, want = pm.compute(), exact_values(masks, maps)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    pm_normal = PixelMetrics(0.0, 1.0)
    pm_normal.update(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4)))
    assert all(v is None for v in pm_normal.compute().values())


def test_scores_outside_range_and_bad_settings_raise() -> None:
    pm = PixelMetrics(0.0, 1.0)
    with pytest.raises(VQFlowError, match="range"):
        pm.update(np.zeros((1, 2, 2)), np.full((1, 2, 2), 1.5))
    with pytest.raises(VQFlowError, match="range"):
        PixelMetrics(1.0, 0.0)
    with pytest.raises(VQFlowError, match="num_bins"):
        PixelMetrics(0.0, 1.0, num_bins=1)


def test_compute_class_metrics_binned_and_exact() -> None:
    masks, maps = realistic_case(11, n=9, size=32)
    labels = masks.any(axis=(1, 2)).astype(int)
    scores = maps.max(axis=(1, 2))
    binned = compute_class_metrics(labels, scores, masks, maps)
    exact = compute_class_metrics(labels, scores, masks, maps, exact=True)
    assert exact["image_auroc"] == pytest.approx(roc_auc_score(labels, scores))
    for key in KEYS:
        assert exact[key] == pytest.approx(exact_values(masks, maps)[key], abs=1e-12)
        assert abs(binned[key] - exact[key]) < 1e-3
    image_only = compute_class_metrics(labels, scores)
    assert all(image_only[key] is None for key in KEYS)
    assert image_only["image_ap"] == exact["image_ap"]
    with pytest.raises(VQFlowError, match="maps"):
        compute_class_metrics(labels[:-1], scores[:-1], masks, maps)
