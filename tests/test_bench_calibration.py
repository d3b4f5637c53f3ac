"""benchmarks/calibration.py's tail rules: on Gaussian scores with many images each margin model
lands on the true 0.99 quantile, and every concept's threshold keeps its own offset."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import calibration


def _scores(rng: np.random.Generator, n: int, shift: float) -> dict:
    concept = rng.integers(0, 2, n)
    score = rng.standard_normal(n) + 3.0 * concept + shift  # concept 1 sits 3 higher
    return {"score": score.tolist(), "concept": concept.tolist()}


@pytest.mark.parametrize("kind", ["gauss", "std", "train-shape"])
def test_tail_margins_find_the_gaussian_quantile_above_each_concepts_offset(kind):
    rng = np.random.default_rng(0)
    tr, va = _scores(rng, 20000, 0.0), _scores(rng, 20000, 0.5)  # held-out normals score 0.5 higher
    thr, per = calibration.make_tail(kind, prior=0.0)(tr, va, 0.99)
    # truth: concept k's 0.99 quantile of the held-out scores, 3k + 0.5 + 2.326
    assert per[0] == pytest.approx(0.5 + 2.326, abs=0.08)
    assert per[1] == pytest.approx(3.5 + 2.326, abs=0.08)
    assert thr == pytest.approx(np.median(tr["score"]) + 0.5 + 2.326, abs=0.08)


def test_the_holdout_set_draws_on_pictures_the_demo_and_dev_never_use():
    """A check of the defaults means nothing on data they were chosen on: every holdout picture
    ships in scikit-image's wheel (no download) and none is one of the demo's or dev's."""
    import skimage.data

    from vqflow.data import demo

    used = {fn for fn, _ in demo.TEXTURES.values()} | {"moon", "retina"}
    pictures = {fn for fn, _ in calibration.HOLDOUT.values()}
    assert not pictures & used
    for fn in pictures:
        picture = getattr(skimage.data, fn)()
        assert min(picture.shape[:2]) >= demo.WINDOW  # room for the generator's crops
