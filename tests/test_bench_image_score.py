"""benchmarks/image_score.py: which training images a Fashion-MNIST development set leaves out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import image_score
import peers


def test_training_indices_match_an_idx_subset_by_content_and_png_files_by_name(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28), dtype=np.uint8)
    subset = tmp_path / "subset"
    subset.mkdir()
    peers.write_idx(subset / "train-images-idx3-ubyte", images[[4, 1]])
    assert image_score.training_indices(subset, images) == {1, 4}

    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in (0, 5):
        Image.fromarray(images[i]).save(pngs / f"tshirt_{i:05d}.png")
    assert image_score.training_indices(pngs, images) == {0, 5}


def _z(normals: np.ndarray, x: np.ndarray) -> np.ndarray:
    """x standardised by hand as the benchmark does: the normals' median, and their 5-95% spread."""
    lo, mid, hi = np.quantile(normals, [0.05, 0.5, 0.95])
    return (x - mid) / (hi - lo)


def test_a_two_sided_component_counts_its_distance_from_the_normals_median():
    rng = np.random.default_rng(1)
    val = {"rel": rng.normal(size=40), "a": rng.normal(size=40), "b": rng.normal(2.0, 3.0, size=40)}
    test = {"rel": rng.normal(size=9), "a": rng.normal(size=9), "b": np.linspace(-10, 10, 9)}
    score = image_score.combined({"val": val, "test": test}, ("a", "|b|"))["test"]
    np.testing.assert_allclose(score, _z(val["a"], test["a"]) + np.abs(_z(val["b"], test["b"])))
    assert score[0] > score[4] < score[8]  # far below the normals is as suspicious as far above


def test_positive_weighed_and_max_joins_follow_their_definitions():
    rng = np.random.default_rng(2)
    val = {"rel": rng.normal(size=40), "a": rng.normal(size=40), "b": rng.normal(1.0, 2.0, size=40)}
    test = {"rel": rng.normal(size=9), "a": rng.normal(size=9), "b": np.linspace(-8, 8, 9)}
    ev = {"val": val, "test": test}
    za, zb = _z(val["a"], test["a"]), _z(val["b"], test["b"])
    np.testing.assert_allclose(image_score.combined(ev, ("a", "pos(b)"))["test"], za + np.maximum(zb, 0.0))
    np.testing.assert_allclose(image_score.combined(ev, ("a", "0.25*b"))["test"], za + 0.25 * zb)
    np.testing.assert_allclose(image_score.combined(ev, ("max", "a", "b"))["test"], np.maximum(za, zb))
    assert (zb < 0).any() and (zb > 0).any()  # both branches of pos() are exercised


def test_an_idx_record_is_counted_under_its_garment(tmp_path):
    """A Fashion-MNIST record of the IDX loader ("fmnist:<images>#<index>") is grouped by the label
    beside its images file, a PNG of the benchmark's layout by its file name."""
    import calibration

    labels = np.array([3, 9, 0], dtype=np.uint8)
    peers.write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    images = tmp_path / "t10k-images-idx3-ubyte"
    got = [calibration._group(f"fmnist:{images}#{i}", "fmnist") for i in range(3)]
    assert got == [calibration.GARMENTS[g] for g in labels] == ["dress", "boot", "tshirt"]
    assert calibration._group("/x/test/good/coat_00012.png", "fmnist") == "coat"
    assert calibration._group("/x/brick/test/good/000.png", "brick") == "brick"


def test_verdicts_at_a_working_point_are_counted_per_class_against_a_hand_made_threshold():
    """One concept: the threshold is the training median plus the held-out quantile of the excess,
    floored at the training normals' own quantile plus the held-out median excess; rates by hand."""
    rng = np.random.default_rng(2)
    n_tr, n_va = 40, 30
    test_score = np.array([0.0, 5.0, 9.0, 1.0, 0.5, 8.0, 0.2, 7.0])
    ev = {
        "train": {"rel": np.zeros(n_tr), "concept": np.zeros(n_tr, int)},
        "val": {"rel": np.zeros(n_va), "concept": np.zeros(n_va, int)},
        "test": {
            "rel": np.zeros(8),
            "concept": np.zeros(8, int),
            "cls": np.array(["a", "a", "a", "a", "b", "b", "b", "b"]),
            "label": np.array([0, 0, 1, 1, 0, 0, 1, 1]),
        },
    }
    score = {"train": rng.normal(0, 1, n_tr), "val": rng.normal(1, 2, n_va), "test": test_score}
    for q in (0.9, 0.98):
        median = np.median(score["train"])
        excess = score["val"] - median
        thr = max(median + np.quantile(excess, q), np.quantile(score["train"], q) + max(np.median(excess), 0))
        got = image_score.judge(ev, score, q, prior=20.0, tail_images=20)
        flagged = test_score > thr
        assert got["false_alarms_per_class"] == {"a": 50.0 * flagged[:2].sum(), "b": 50.0 * flagged[4:6].sum()}
        assert np.isclose(got["all_false_alarms"], 25.0 * flagged[[0, 1, 4, 5]].sum())
        assert np.isclose(got["caught"], 25.0 * flagged[[2, 3, 6, 7]].sum())
