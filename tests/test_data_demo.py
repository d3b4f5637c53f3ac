"""The embedded demo set: built once into the cache, deterministic, masks exactly on anomalies."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

from vqflow.data import demo, demo_defects, demo_root, load_data, read_image, read_mask


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VQFLOW_CACHE", str(cache))
        yield cache, load_data(["demo"])


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_demo_classes_counts_and_masks(demo_cache):
    cache, s = demo_cache
    assert (cache / demo.VERSION / demo.MARKER).is_file()
    assert len(s.classes) >= 4 and s.has_masks and s.mask_classes == set(s.classes)
    for cls in s.classes:
        test = [r for r in s.test if r.cls == cls]
        assert 40 <= sum(r.cls == cls for r in s.train) <= 60 and 20 <= len(test) <= 30
        assert sum(r.label for r in test) * 2 == len(test)
    for r in s.test:
        assert (r.mask_path is not None) == (r.label == 1)
        if r.mask_path:
            m = read_mask(r.mask_path)
            assert m.shape == (256, 256) and 0 < m.sum() < m.size // 2
    img = read_image(s.test[0])
    assert img.size == (256, 256) and img.mode == "RGB"
    kinds = {r.path.split("/")[-2] for r in s.test if r.label}
    assert len(kinds) >= 5


@pytest.mark.parametrize("kind", sorted(demo_defects.DEFECTS))
def test_each_defect_changes_pixels_where_its_mask_is(kind):
    rng = np.random.default_rng(0)
    base = np.clip(0.5 + 0.05 * rng.standard_normal((128, 128, 3)), 0, 1)
    donor = np.clip(0.3 + 0.2 * rng.standard_normal((256, 256, 3)), 0, 1)
    out, mask = demo_defects.DEFECTS[kind](base.copy(), np.random.default_rng(5), donor)
    assert out.shape == base.shape and mask.dtype == bool and mask.sum() > 0
    diff = np.abs(out - base).max(axis=2)
    assert diff[mask].mean() > 0.05
    far = ~binary_dilation(mask, iterations=6)
    assert diff[far].max() < 0.02  # nothing visible changes away from the defect


def test_demo_is_reused(demo_cache, monkeypatch):
    cache, _ = demo_cache
    monkeypatch.setenv("VQFLOW_CACHE", str(cache))
    before = {p: p.stat().st_mtime_ns for p in (cache / demo.VERSION).rglob("*.png")}
    monkeypatch.setattr(demo, "build_tree", lambda out: pytest.fail("demo rebuilt although cached"))
    assert demo_root() == cache / demo.VERSION
    assert {p: p.stat().st_mtime_ns for p in (cache / demo.VERSION).rglob("*.png")} == before
    assert [p.name for p in cache.iterdir()] == [demo.VERSION]  # no temp folders left behind


def test_two_builds_are_byte_identical(demo_cache, tmp_path, monkeypatch):
    cache, _ = demo_cache
    monkeypatch.setattr(demo, "N_TRAIN", 2)
    monkeypatch.setattr(demo, "N_TEST_GOOD", 1)
    monkeypatch.setattr(demo, "N_TEST_BAD", 6)
    a = demo_root(tmp_path / "a")
    b = demo_root(tmp_path / "b")
    assert _digest(a) == _digest(b) and len(_digest(a)) > 20
    # the small build draws the same first training crops as the full cached one
    first = "brick/train/good/000.png"
    assert _digest(a)[first] == _digest(cache / demo.VERSION)[first]
