"""AUPRO and the PRO curve against a plain brute force over every distinct threshold."""

from collections import deque

import numpy as np
import pytest

from vqflow.errors import VQFlowError
from vqflow.metrics import aupro, pro_curve


def regions_8_connected(mask: np.ndarray) -> list[np.ndarray]:
    """Flood fill: each region as a boolean image."""
    seen = np.zeros_like(mask, dtype=bool)
    regions = []
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                region = np.zeros_like(seen)
                queue = deque([(i, j)])
                seen[i, j] = True
                while queue:
                    a, b = queue.popleft()
                    region[a, b] = True
                    for da in (-1, 0, 1):
                        for db in (-1, 0, 1):
                            u, v = a + da, b + db
                            if 0 <= u < h and 0 <= v < w and mask[u, v] and not seen[u, v]:
                                seen[u, v] = True
                                queue.append((u, v))
                regions.append(region)
    return regions


def brute_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[list[float], list[float]]:
    regions = [(k, r) for k in range(len(masks)) for r in regions_8_connected(masks[k])]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(maps.ravel().tolist()), reverse=True):
        predicted = maps >= t
        fprs.append((predicted & normal).sum() / normal.sum())
        pros.append(np.mean([predicted[k][r].mean() for k, r in regions]))
    return fprs, pros


def brute_aupro(masks: np.ndarray, maps: np.ndarray, limit: float) -> float:
    fprs, pros = brute_curve(masks, maps)
    area = 0.0
    for x0, y0, x1, y1 in zip(fprs[:-1], pros[:-1], fprs[1:], pros[1:]):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


def random_case(seed: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = rng.random((4, 9, 9)) > 0.8  # scattered pixels: many diagonal-only neighbours
    masks[0] = False  # an image with an empty mask
    maps = np.round((rng.random(masks.shape) + 0.5 * masks) * levels) / levels
    return masks, maps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [4, 1000])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(seed: int, levels: int, limit: float) -> None:
    masks, maps = random_case(seed, levels)
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(brute_aupro(masks, maps, limit), abs=1e-12)


def test_pro_curve_points_match_brute_force() -> None:
    masks, maps = random_case(7, 6)
    fpr, pro = pro_curve(masks, maps)
    want_fpr, want_pro = brute_curve(masks, maps)
    np.testing.assert_allclose(fpr, want_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, want_pro, atol=1e-12)


def test_diagonal_pixels_form_one_region() -> None:
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 1, 2] = True  # 8-connected: one region of 3
    maps = np.zeros((1, 5, 5))
    maps[0, 1, 2] = 1.0  # only the diagonal neighbour is found at the top threshold
    fpr, pro = pro_curve(masks, maps)
    assert (fpr[1], pro[1]) == pytest.approx((0.0, 1 / 3))  # 4-connectivity would give 1/2
    assert aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps, 0.3), abs=1e-12)


def test_constant_maps_give_the_diagonal() -> None:
    masks, _ = random_case(1, 4)
    maps = np.full(masks.shape, 0.25)
    assert aupro(masks, maps) == pytest.approx(0.15)
    assert aupro(masks, maps) == pytest.approx(brute_aupro(masks, maps, 0.3))


def test_undefined_cases_are_none() -> None:
    maps = np.random.default_rng(0).random((2, 5, 5))
    assert aupro(np.zeros((2, 5, 5), dtype=bool), maps) is None
    assert aupro(np.ones((2, 5, 5), dtype=bool), maps) is None
    assert pro_curve(np.zeros((2, 5, 5), dtype=bool), maps) is None


def test_bad_fpr_limit_raises() -> None:
    masks, maps = random_case(0, 4)
    for limit in (0.0, 1.5, -0.1):
        with pytest.raises(VQFlowError, match="fpr_limit"):
            aupro(masks, maps, fpr_limit=limit)
