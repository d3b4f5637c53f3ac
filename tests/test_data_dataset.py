"""ImageDataset: resize/normalise against a PIL+numpy reference, mask alignment, mask errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data_trees import write_mask, write_rgb
from vqflow.data import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, Record, collate, denormalize
from vqflow.errors import VQFlowError


def test_image_matches_reference_normalisation(tmp_path):
    arr = write_rgb(tmp_path / "a.png", 1, size=(30, 20))
    sample = ImageDataset([Record(str(tmp_path / "a.png"), 0, "c")], 16)[0]
    ref = np.asarray(Image.fromarray(arr).resize((16, 16), Image.LANCZOS), dtype=np.float64) / 255.0
    ref = (ref - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert sample.image.dtype == torch.float32 and sample.image.shape == (3, 16, 16)
    np.testing.assert_allclose(sample.image.numpy(), ref.transpose(2, 0, 1), atol=1e-5)
    assert sample.mask is None and sample.label == 0 and sample.cls == "c"
    np.testing.assert_array_equal(
        denormalize(sample.image), np.asarray(Image.fromarray(arr).resize((16, 16), Image.LANCZOS))
    )


def test_mask_resized_nearest_and_aligned(tmp_path):
    write_rgb(tmp_path / "a.png", 2, size=(40, 20))
    truth = write_mask(tmp_path / "a_mask.png", size=(40, 20), box=(20, 0, 40, 10))  # top-right quarter
    ds = ImageDataset([Record(str(tmp_path / "a.png"), 1, "c", str(tmp_path / "a_mask.png"))], 8)
    mask = ds[0].mask
    assert mask.shape == (1, 8, 8) and set(mask.unique().tolist()) == {0.0, 1.0}
    ref = np.asarray(Image.fromarray(truth.astype(np.uint8) * 255).resize((8, 8), Image.NEAREST)) > 0
    np.testing.assert_array_equal(mask[0].numpy() > 0, ref)
    assert mask[0, :4, 4:].all() and not mask[0, 4:].any() and not mask[0, :, :4].any()


def test_normal_records_get_zero_masks_when_dataset_has_masks(tmp_path):
    write_rgb(tmp_path / "n.png", 3)
    rec = Record(str(tmp_path / "n.png"), 0, "c")
    assert ImageDataset([rec], 8)[0].mask is None
    zero = ImageDataset([rec], 8, has_masks=True)[0].mask
    assert zero.shape == (1, 8, 8) and zero.sum() == 0


def test_missing_and_missized_masks_name_the_mask(tmp_path):
    write_rgb(tmp_path / "a.png", 4, size=(24, 20))
    with pytest.raises(VQFlowError, match="lost_mask.png"):
        ImageDataset([Record(str(tmp_path / "a.png"), 1, "c", str(tmp_path / "lost_mask.png"))], 8)[0]
    write_mask(tmp_path / "small_mask.png", size=(12, 10), box=(1, 1, 3, 3))
    with pytest.raises(VQFlowError, match="small_mask.png"):
        ImageDataset([Record(str(tmp_path / "a.png"), 1, "c", str(tmp_path / "small_mask.png"))], 8)[0]


def test_collate_batches_samples(tmp_path):
    write_rgb(tmp_path / "a.png", 5)
    write_rgb(tmp_path / "b.png", 6)
    write_mask(tmp_path / "b_mask.png")
    ds = ImageDataset(
        [
            Record(str(tmp_path / "a.png"), 0, "c"),
            Record(str(tmp_path / "b.png"), 1, "c", str(tmp_path / "b_mask.png")),
        ],
        8,
    )
    batch = collate([ds[0], ds[1]])
    assert batch.image.shape == (2, 3, 8, 8) and batch.mask.shape == (2, 1, 8, 8)
    assert batch.label.tolist() == [0, 1] and batch.mask[0].sum() == 0 and batch.mask[1].sum() > 0
