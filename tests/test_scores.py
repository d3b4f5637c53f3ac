"""Anomaly maps and image scores (METHOD.md section 6) against plain numpy/scipy references.

Boundary of gaussian_blur: it matches scipy.ndimage.gaussian_filter(mode="mirror",
truncate=4.0) (torch "reflect" padding repeats no edge pixel, i.e. scipy "mirror"; scipy
"reflect" repeats the edge and differs near the border). When a side is not longer than the
kernel radius, the kernel is cut to that side and renormalised, unlike scipy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from vqflow.model.scores import (
    ScoreStats,
    add_map,
    gaussian_blur,
    log_likelihood_maps,
    mul_map,
    score_batch,
    topk_mean,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def loglik_np(b: int = 2, s: int = 3, h: int = 12, w: int = 10, seed: int = 0) -> np.ndarray:
    """Random log-likelihood maps (B, S, H, W), float64, all negative like real ones."""
    return -np.abs(rng(seed).normal(1.0, 0.7, size=(b, s, h, w)))


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


# ---------- references, written plainly ----------


def bilinear_axis_np(a: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Half-pixel-centre linear resampling along one axis (align_corners=False), edges clamped."""
    n = a.shape[axis]
    src = np.maximum((np.arange(out) + 0.5) * n / out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    lam = src - i0
    shape = [1] * a.ndim
    shape[axis] = out
    lam = lam.reshape(shape)
    return np.take(a, i0, axis=axis) * (1 - lam) + np.take(a, i1, axis=axis) * lam


def bilinear_np(a: np.ndarray, h: int, w: int) -> np.ndarray:
    return bilinear_axis_np(bilinear_axis_np(a, h, -2), w, -1)


def mul_np(ll: np.ndarray) -> np.ndarray:
    out = np.empty(ll.shape[:1] + ll.shape[2:])
    for i, img in enumerate(ll):
        m = img.sum(0)
        out[i] = 1 - np.exp(m - m.max())
    return out


def add_np(ll: np.ndarray) -> np.ndarray:
    out = np.empty(ll.shape[:1] + ll.shape[2:])
    for i, img in enumerate(ll):
        p = sum(np.exp(lv - lv.max()) for lv in img)
        out[i] = p.max() - p
    return out


def topk_np(maps: np.ndarray, fraction: float) -> np.ndarray:
    flat = maps.reshape(len(maps), -1)
    k = max(1, math.ceil(fraction * flat.shape[1]))
    return np.array([np.sort(row)[::-1][:k].mean() for row in flat])


def blur_np(maps: np.ndarray, sigma: float, mode: str = "mirror") -> np.ndarray:
    return np.stack([gaussian_filter(m, sigma, mode=mode, truncate=4.0) for m in maps])


def cut_kernel_blur_np(img: np.ndarray, sigma: float) -> np.ndarray:
    """Brute-force blur of one (H, W) map with the kernel cut to side-1 and renormalised,
    mirror boundary: the documented behaviour for sides not longer than the radius."""
    radius = max(1, int(4 * sigma + 0.5))
    out = img.astype(float)
    for axis in (0, 1):
        n = out.shape[axis]
        r = min(radius, n - 1)
        offs = np.arange(-r, r + 1)
        k = np.exp(-0.5 * (offs / sigma) ** 2)
        k /= k.sum()
        res = np.zeros_like(out)
        for j, o in enumerate(offs):
            idx = np.arange(n) + o
            idx = np.where(idx < 0, -idx, idx)
            idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
            res += k[j] * np.take(out, idx, axis=axis)
        out = res
    return out


# ---------- log_likelihood_maps ----------


def test_loglik_equal_size_is_minus_half_channel_mean_of_squares():
    g = rng(1)
    u = [g.normal(size=(2, c, 6, 6)) for c in (3, 5)]
    got = log_likelihood_maps([t(z) for z in u], 6).numpy()
    want = np.stack([-0.5 * (z**2).mean(1) for z in u], 1)
    assert got.shape == (2, 2, 6, 6)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size", [8, (8, 6), (3, 5)])
def test_loglik_upsampled_bilinear_half_pixel(size):
    g = rng(2)
    u = [g.normal(size=(2, c, s, s)) for c, s in ((4, 8), (6, 4), (2, 2))]
    got = log_likelihood_maps([t(z) for z in u], size).numpy()
    h, w = (size, size) if isinstance(size, int) else size
    want = np.stack([bilinear_np(-0.5 * (z**2).mean(1), h, w) for z in u], 1)
    assert got.shape == (2, 3, h, w)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bilinear_reference_agrees_with_torch_interpolate():
    """Guards the hand-written resize reference itself (torch only for the resize)."""
    a = rng(3).normal(size=(1, 1, 3, 5))
    want = torch.nn.functional.interpolate(t(a), size=(7, 4), mode="bilinear", align_corners=False)
    np.testing.assert_allclose(bilinear_np(a, 7, 4), want.numpy(), rtol=1e-12, atol=1e-12)


# ---------- mul / add maps ----------


def test_mul_map_per_image():
    ll = loglik_np()
    np.testing.assert_allclose(mul_map(t(ll)).numpy(), mul_np(ll), rtol=1e-12, atol=1e-12)


def test_add_map_per_image():
    ll = loglik_np()
    np.testing.assert_allclose(add_map(t(ll)).numpy(), add_np(ll), rtol=1e-12, atol=1e-12)


def test_per_image_maps_are_zero_at_the_most_normal_pixel_and_nonnegative():
    ll = loglik_np(seed=4)
    for got in (mul_map(t(ll)).numpy(), add_map(t(ll)).numpy()):
        assert (got >= -1e-12).all()
        np.testing.assert_allclose(got.reshape(len(got), -1).min(1), 0.0, atol=1e-12)


def test_score_stats_from_loglik_matches_numpy():
    ll = loglik_np(b=4, s=3, seed=5)
    st = ScoreStats.from_loglik(t(ll))
    nll = -ll.sum(1)
    # torch's std is the sample std: numpy ddof=1.
    assert st.mul_mean == pytest.approx(nll.mean(), rel=1e-12)
    assert st.mul_std == pytest.approx(nll.std(ddof=1), rel=1e-12)
    np.testing.assert_allclose(st.scale_mean, [(-ll[:, s]).mean() for s in range(3)], rtol=1e-12)
    np.testing.assert_allclose(st.scale_std, [(-ll[:, s]).std(ddof=1) for s in range(3)], rtol=1e-12)


def test_score_stats_std_floor_on_constant_maps():
    st = ScoreStats.from_loglik(torch.full((2, 2, 3, 3), -1.0, dtype=torch.float64))
    assert st.mul_std > 0 and min(st.scale_std) > 0


def test_maps_with_training_statistics_are_standardised_nll():
    train = loglik_np(b=3, seed=6)
    st = ScoreStats(mul_mean=1.7, mul_std=0.4, scale_mean=[0.5, 0.9, 1.3], scale_std=[0.2, 0.3, 0.6])
    ll = loglik_np(seed=7)
    want_mul = (-ll.sum(1) - 1.7) / 0.4
    mean = np.array(st.scale_mean)[None, :, None, None]
    std = np.array(st.scale_std)[None, :, None, None]
    want_add = ((-ll - mean) / std).sum(1)
    np.testing.assert_allclose(mul_map(t(ll), st).numpy(), want_mul, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(add_map(t(ll), st).numpy(), want_add, rtol=1e-12, atol=1e-12)
    # Fitted on the training maps themselves, the mul map has mean 0 and sample std 1 there.
    fitted = mul_map(t(train), ScoreStats.from_loglik(t(train))).numpy()
    assert fitted.mean() == pytest.approx(0.0, abs=1e-10)
    assert fitted.std(ddof=1) == pytest.approx(1.0, rel=1e-10)


# ---------- top-k mean ----------


@pytest.mark.parametrize("fraction", [0.03, 0.1, 0.25, 0.5, 1.0])
def test_topk_mean_brute_force(fraction):
    maps = rng(8).normal(size=(3, 9, 11))
    np.testing.assert_allclose(topk_mean(t(maps), fraction).numpy(), topk_np(maps, fraction), rtol=1e-12)


@pytest.mark.parametrize("fraction", [1e-9, 0.0])
def test_topk_mean_tiny_fraction_uses_one_pixel(fraction):
    maps = rng(9).normal(size=(2, 5, 5))
    np.testing.assert_allclose(topk_mean(t(maps), fraction).numpy(), maps.reshape(2, -1).max(1), rtol=1e-12)


def test_topk_mean_with_ties_across_the_cut():
    # 20 pixels, top 25% = 5 pixels: two 9s, then three of the six 4s.
    row = np.array([9, 9, 4, 4, 4, 4, 4, 4] + [1] * 12, dtype=float)
    maps = np.stack([rng(10).permutation(row), np.full(20, 2.0)]).reshape(2, 4, 5)
    got = topk_mean(t(maps), 0.25).numpy()
    np.testing.assert_allclose(got, topk_np(maps, 0.25), rtol=1e-12)
    np.testing.assert_allclose(got, [(9 + 9 + 4 + 4 + 4) / 5, 2.0], rtol=1e-12)


def test_topk_mean_exact_percent_count():
    maps = np.arange(100, dtype=float).reshape(1, 10, 10)
    np.testing.assert_allclose(topk_mean(t(maps), 0.07).numpy(), [np.arange(93, 100).mean()], rtol=1e-12)


# ---------- gaussian blur ----------


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.7])
def test_blur_matches_scipy_mirror(sigma):
    maps = rng(11).normal(size=(2, 17, 14))
    got = gaussian_blur(t(maps), sigma).numpy()
    np.testing.assert_allclose(got, blur_np(maps, sigma, "mirror"), rtol=1e-10, atol=1e-12)


def test_blur_interior_matches_scipy_reflect_but_border_does_not():
    sigma = 1.0
    r = int(4 * sigma + 0.5)
    maps = rng(12).normal(size=(1, 16, 16))
    got = gaussian_blur(t(maps), sigma).numpy()
    ref = blur_np(maps, sigma, "reflect")
    np.testing.assert_allclose(got[:, r:-r, r:-r], ref[:, r:-r, r:-r], rtol=1e-10, atol=1e-12)
    assert np.abs(got[:, 0] - ref[:, 0]).max() > 1e-4


def test_blur_float32_matches_scipy_to_1e5():
    maps = rng(13).normal(size=(2, 20, 20)).astype(np.float32)
    got = gaussian_blur(t(maps), 1.3).numpy()
    np.testing.assert_allclose(got, blur_np(maps.astype(float), 1.3), atol=1e-5)


def test_blur_sides_shorter_than_radius_cut_and_renormalise_kernel():
    maps = rng(14).normal(size=(2, 3, 6))  # radius 8 > both sides; also a one-pixel side
    got = gaussian_blur(t(maps), 2.0).numpy()
    want = np.stack([cut_kernel_blur_np(m, 2.0) for m in maps])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    const = gaussian_blur(torch.full((1, 3, 6), 2.5, dtype=torch.float64), 2.0)
    np.testing.assert_allclose(const.numpy(), 2.5, rtol=1e-12)
    one_row = rng(15).normal(size=(1, 1, 7))
    np.testing.assert_allclose(gaussian_blur(t(one_row), 1.0).numpy(), cut_kernel_blur_np(one_row[0], 1.0)[None])


def test_blur_sigma_zero_is_identity():
    maps = t(rng(16).normal(size=(2, 5, 5)))
    assert torch.equal(gaussian_blur(maps, 0.0), maps)


# ---------- score_batch ----------


@pytest.mark.parametrize("image_map", ["mul", "add"])
@pytest.mark.parametrize("pixel_map", ["mul", "add"])
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_score_batch_is_topk_of_blurred_maps(image_map, pixel_map, sigma):
    ll = loglik_np(b=3, h=12, w=12, seed=17)
    build = {"mul": mul_np, "add": add_np}
    blur = (lambda m: blur_np(m, sigma)) if sigma > 0 else (lambda m: m)
    out = score_batch(t(ll), image_map, pixel_map, topk=0.05, blur_sigma=sigma)
    np.testing.assert_allclose(out.score.numpy(), topk_np(blur(build[image_map](ll)), 0.05), rtol=1e-10)
    np.testing.assert_allclose(out.pixel_map.numpy(), blur(build[pixel_map](ll)), rtol=1e-10, atol=1e-12)
    assert out.score.shape == (3,) and out.pixel_map.shape == (3, 12, 12)


def test_score_batch_with_training_statistics():
    ll = loglik_np(b=2, h=12, w=12, seed=18)
    st = ScoreStats.from_loglik(t(loglik_np(b=4, h=12, w=12, seed=19)))
    out = score_batch(t(ll), "mul", "add", topk=0.1, blur_sigma=1.0, stats=st)
    mul = (-ll.sum(1) - st.mul_mean) / st.mul_std
    add = ((-ll - np.array(st.scale_mean)[None, :, None, None]) / np.array(st.scale_std)[None, :, None, None]).sum(1)
    np.testing.assert_allclose(out.score.numpy(), topk_np(blur_np(mul, 1.0), 0.1), rtol=1e-10)
    np.testing.assert_allclose(out.pixel_map.numpy(), blur_np(add, 1.0), rtol=1e-10, atol=1e-12)


# ---------- properties ----------


@pytest.mark.parametrize("image_map,pixel_map", [("mul", "add"), ("add", "mul")])
def test_per_image_scores_invariant_to_constant_loglik_shift(image_map, pixel_map):
    ll = loglik_np(b=2, h=12, w=12, seed=20)
    base = score_batch(t(ll), image_map, pixel_map, topk=0.05, blur_sigma=1.0)
    shifted = score_batch(t(ll - 3.7), image_map, pixel_map, topk=0.05, blur_sigma=1.0)
    np.testing.assert_allclose(shifted.score.numpy(), base.score.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(shifted.pixel_map.numpy(), base.pixel_map.numpy(), rtol=1e-9, atol=1e-12)


def test_add_map_invariant_to_per_scale_shifts_but_training_stats_are_not():
    ll = loglik_np(seed=21)
    shift = np.array([0.5, -2.0, 4.0])[None, :, None, None]
    np.testing.assert_allclose(add_map(t(ll + shift)).numpy(), add_map(t(ll)).numpy(), rtol=1e-9, atol=1e-12)
    st = ScoreStats.from_loglik(t(loglik_np(b=3, seed=22)))
    assert not np.allclose(mul_map(t(ll - 1.0), st).numpy(), mul_map(t(ll), st).numpy())


@pytest.mark.parametrize("image_map", ["mul", "add"])
@pytest.mark.parametrize("with_stats", [False, True])
def test_low_likelihood_region_raises_score_and_map(image_map, with_stats):
    g = rng(23)
    clean = -1.0 + 0.05 * g.normal(size=(1, 3, 16, 16))
    defect = clean.copy()
    defect[:, :, 5:9, 6:10] -= 4.0
    st = ScoreStats.from_loglik(t(-1.0 + 0.05 * g.normal(size=(4, 3, 16, 16)))) if with_stats else None
    a = score_batch(t(clean), image_map, image_map, topk=0.03, blur_sigma=1.0, stats=st)
    b = score_batch(t(defect), image_map, image_map, topk=0.03, blur_sigma=1.0, stats=st)
    assert b.score.item() > a.score.item() + 0.1
    region = b.pixel_map[0, 5:9, 6:10]
    outside = b.pixel_map[0].clone()
    outside[2:12, 3:13] = -np.inf  # exclude the region and its blur halo
    assert region.min() > outside.max()


def test_nll_map_is_the_log_form_of_mul_and_does_not_saturate():
    from vqflow.model.scores import nll_map

    rng = np.random.default_rng(3)
    ll = -rng.exponential(1.0, (2, 3, 6, 6))
    ll[1, :, :2, :2] -= 60.0  # far below the rest: 1 - exp(M - max M) is exactly 1 there
    m = ll.sum(1)
    expected = m.reshape(2, -1).max(1)[:, None, None] - m
    got = nll_map(t(ll)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    mul = mul_map(t(ll).float()).numpy()
    assert len(np.unique(mul[1][:2, :2])) == 1, "the mul map ties in the saturated region"
    assert len(np.unique(got[1][:2, :2])) > 1, "the log form keeps the ranking there"
    # Same per-pixel order as the mul map wherever mul does not saturate.
    a, b = got[0].ravel(), mul[0].ravel()
    assert (np.argsort(a, kind="stable") == np.argsort(b, kind="stable")).mean() > 0.9
