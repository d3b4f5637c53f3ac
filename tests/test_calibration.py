"""Verdict thresholds per learned concept (vqflow.calibration.concept_thresholds)."""

from __future__ import annotations

import numpy as np
import pytest

from vqflow.calibration import Calibration, concept_thresholds, standardisation, tail_quantile
from vqflow.config import from_dict, preset, set_key
from vqflow.errors import VQFlowError


def _sample(rng: np.random.Generator, offsets: dict[int, float], n: int) -> tuple[np.ndarray, np.ndarray]:
    concepts = rng.choice(list(offsets), n)
    scores = np.array([offsets[c] for c in concepts]) + rng.normal(0, 0.05, n)
    return scores, concepts


def test_thresholds_follow_each_concepts_typical_score():
    """Brute force: offset = shrunk median per concept, margin = held-out quantile of the excess."""
    rng = np.random.default_rng(0)
    offsets = {0: 0.2, 1: 0.5, 2: 0.8}
    ts, tc = _sample(rng, offsets, 600)
    vs, vc = _sample(rng, offsets, 60)
    prior, q = 20.0, 0.9
    thr, per = concept_thresholds(ts, tc, vs, vc, q, prior, tail_images=0, tail_fit=0)
    pooled = np.median(ts)
    expect = {}
    for k in offsets:
        n = int((tc == k).sum())
        expect[k] = (n * np.median(ts[tc == k]) + prior * pooled) / (n + prior)
    margin = np.quantile([s - expect[int(k)] for s, k in zip(vs, vc)], q)
    assert per == pytest.approx({k: v + margin for k, v in expect.items()})
    assert thr == pytest.approx(pooled + margin)
    # Normals of a low-scoring concept are judged against a low threshold, a high one's against a high one.
    assert per[0] < thr < per[2]
    fresh, fc = _sample(rng, offsets, 3000)
    flagged = fresh > np.array([per[int(k)] for k in fc])
    for k in offsets:  # about 1 - q false alarms in every concept, not all in the highest-scoring one
        assert flagged[fc == k].mean() < 0.25


def test_a_concept_that_varies_more_keeps_its_threshold_above_its_own_training_tail():
    """Brute force: a concept with >= tail_images training normals is judged against at least the
    quantile of its own training scores plus the held-out normals' median excess (> 0: the model
    has seen its training normals); a concept with fewer keeps offset + margin."""
    rng = np.random.default_rng(3)
    spread = {0: 0.05, 1: 0.05, 2: 0.6}
    center = {0: 0.2, 1: 0.5, 2: 0.8}

    def draw(n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
        concepts = np.concatenate([np.full(n, 0), np.full(n, 1), np.full(n, 2), [3] * 5])
        scores = np.array([center.get(c, 0.5) + shift + rng.normal(0, spread.get(c, 0.05)) for c in concepts])
        return scores, concepts

    ts, tc = draw(200, 0.0)
    vs, vc = draw(10, 0.1)  # held-out normals score higher than the training ones
    q, prior = 0.99, 20.0
    thr, per = concept_thresholds(ts, tc, vs, vc, q, prior, tail_images=20, tail_fit=0)
    thr0, per0 = concept_thresholds(ts, tc, vs, vc, q, prior, tail_images=0, tail_fit=0)
    assert thr == thr0
    pooled, offsets = np.median(ts), {}
    for k in (0, 1, 2, 3):
        n = int((tc == k).sum())
        offsets[k] = (n * np.median(ts[tc == k]) + prior * pooled) / (n + prior)
    excess = np.array([s - offsets[int(k)] for s, k in zip(vs, vc)])
    margin, gap = np.quantile(excess, q), max(np.median(excess), 0.0)
    assert gap > 0.05
    for k in (0, 1, 2):
        assert per[k] == pytest.approx(max(offsets[k] + margin, np.quantile(ts[tc == k], q) + gap))
    assert per[3] == pytest.approx(offsets[3] + margin) == pytest.approx(per0[3])  # 5 training normals
    assert per[2] > per0[2]  # the wide concept's tail lies above the pooled margin
    fresh, fc = draw(4000, 0.1)
    wide = fc == 2
    flagged = (fresh[wide] > per[2]).mean()
    assert flagged < 0.05 < (fresh[wide] > per0[2]).mean()


def test_a_huge_prior_gives_one_global_threshold():
    rng = np.random.default_rng(1)
    ts, tc = _sample(rng, {0: 0.2, 1: 0.7}, 200)
    vs, vc = _sample(rng, {0: 0.2, 1: 0.7}, 40)
    thr, per = concept_thresholds(ts, tc, vs, vc, 0.99, 1e12, tail_images=0)
    assert thr == pytest.approx(tail_quantile(vs, 0.99))
    assert all(v == pytest.approx(thr) for v in per.values())


def test_tail_quantile_fits_an_exponential_to_the_largest_values_of_a_small_sample():
    """Against scipy: the exponential's scale is the maximum-likelihood fit to the top values'
    excesses over the next one, and the quantile extrapolates their exceedance rate (top / n)."""
    from scipy.stats import expon

    x = np.random.default_rng(4).gamma(2.0, size=30)
    q, top = 0.99, 5
    s = np.sort(x)
    u = s[-top - 1]
    _, scale = expon.fit(s[-top:] - u, floc=0)
    assert tail_quantile(x, q, top) == pytest.approx(u + expon.isf((1 - q) * len(x) / top, scale=scale))
    assert tail_quantile(x, q, top) > s[-1] > np.quantile(x, q)  # past the largest held-out value
    # Where the sample holds `top` values above the quantile, or with top 0, numpy's linear quantile.
    big = np.random.default_rng(5).normal(size=1000)
    assert tail_quantile(big, q, top) == np.quantile(big, q)
    assert tail_quantile(x, q, 0) == np.quantile(x, q)
    assert tail_quantile(x, 1.0, top) == s[-1]
    assert tail_quantile([0.3], q, top) == 0.3


@pytest.mark.parametrize("dist", ["exponential", "normal", "lognormal", "t5"])
def test_tail_quantile_keeps_false_alarms_near_nominal_where_the_linear_quantile_does_not(dist):
    """New normals exchangeable with 30 held-out ones exceed numpy's linear 0.99 quantile about
    4% of the time (it falls between the two largest); the fitted tail's threshold 1-2.5%."""
    from scipy import stats

    laws = {"exponential": stats.expon(), "normal": stats.norm(), "lognormal": stats.lognorm(1.0), "t5": stats.t(5)}
    law = laws[dist]
    rng = np.random.default_rng(6)
    samples = law.rvs(size=(1000, 30), random_state=rng)
    linear = law.sf(np.quantile(samples, 0.99, axis=1))
    fitted = law.sf(np.array([tail_quantile(x, 0.99) for x in samples]))
    assert linear.mean() > 0.03
    assert fitted.mean() < 0.75 * linear.mean()
    assert 0.005 < np.median(fitted) < 0.02


def test_unseen_concept_gets_the_global_threshold():
    cal = Calibration(threshold=0.6, concept_thresholds={1: 0.4})
    assert cal.verdict(0.5, 1) == (0.4, "anomalous")
    assert cal.verdict(0.5, 7) == (0.6, "normal")


def test_retired_key_is_ignored_in_saved_configs_and_refused_when_given():
    saved = preset("fast").to_dict()
    saved["score"]["min_concept_images"] = 10
    assert from_dict(saved).score.concept_prior == 20.0
    with pytest.raises(VQFlowError, match="retired; use score.concept_prior"):
        set_key(preset("fast"), "score.min_concept_images", 5)


def test_standardisation_is_the_median_and_the_5_to_95_spread():
    e = np.stack([np.arange(101.0), 10 * np.arange(101.0) + 3], 1)
    center, scale = standardisation(np.random.default_rng(0).permutation(e))
    assert center == pytest.approx([50.0, 503.0]) and scale == pytest.approx([90.0, 900.0])
    cal = Calibration(score_center=center, score_scale=scale)
    assert cal.combine([[140.0, 503.0]]) == pytest.approx([1.0])
    assert Calibration().combine([[1.0, 2.0]]) == pytest.approx([3.0]), "uncalibrated: the plain sum"
    again = Calibration.from_dict(cal.to_dict())
    assert again.score_center == center and again.score_scale == scale


def test_reference_preset_keeps_the_papers_image_score():
    assert preset("reference").score.image_score == "map"
    assert preset("fast").score.image_score == "local_knn" and preset("fast").score.topk == 0.01
    assert preset("fast").score.knn_k == 10
    assert preset("reference").score.topk == 0.03
