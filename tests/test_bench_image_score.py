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


def test_a_two_sided_component_counts_its_distance_from_the_normals_median():
    rng = np.random.default_rng(1)
    val = {"rel": rng.normal(size=40), "a": rng.normal(size=40), "b": rng.normal(2.0, 3.0, size=40)}
    test = {"rel": rng.normal(size=9), "a": rng.normal(size=9), "b": np.linspace(-10, 10, 9)}
    score = image_score.combined({"val": val, "test": test}, ("a", "|b|"))["test"]

    def z(name, x):
        lo, mid, hi = np.quantile(val[name], [0.05, 0.5, 0.95])
        return (x - mid) / (hi - lo)

    np.testing.assert_allclose(score, z("a", test["a"]) + np.abs(z("b", test["b"])))
    assert score[0] > score[4] < score[8]  # far below the normals is as suspicious as far above
