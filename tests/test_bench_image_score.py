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
