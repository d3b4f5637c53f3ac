"""MVTec AD and VisA loaders on tiny trees in their real layouts."""

from __future__ import annotations

import numpy as np
import pytest

from data_trees import mvtec_tree, visa_original_tree, write_rgb
from vqflow.data import ImageDataset, load_data, mvtec, read_mask, visa
from vqflow.errors import VQFlowError


def test_mvtec_counts_labels_masks(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 2, "crack": 2, "dent": 1}, "tile": {"good": 1, "gray": 1}})
    (tmp_path / "mv" / "license.txt").write_text("x")  # stray files are not classes
    s = mvtec.load(str(root), None, None)
    assert s.classes == ["bottle", "tile"] and s.has_masks and s.mask_classes == {"bottle", "tile"}
    assert len(s.train) == 6 and all(r.label == 0 for r in s.train)
    assert [(r.cls, r.label) for r in s.test].count(("bottle", 1)) == 3
    assert len(s.test) == 7
    for r in s.test:
        assert (r.mask_path is not None) == (r.label == 1)
        if r.mask_path:
            assert r.mask_path.endswith(f"ground_truth/{r.path.split('/')[-2]}/{r.path.split('/')[-1][:3]}_mask.png")
            assert read_mask(r.mask_path).sum() == 8 * 6
    only = mvtec.load(str(root), ["tile"], None)
    assert only.classes == ["tile"] and len(only.train) == 3


def test_mvtec_dataset_masks_are_read(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 1, "crack": 1}})
    s = mvtec.load(str(root), None, None)
    ds = ImageDataset(s.test, 10, has_masks=s.has_masks)
    masks = {ds[i].label: ds[i].mask for i in range(len(ds))}
    assert masks[0].sum() == 0 and masks[1].sum() > 0


def test_mvtec_without_ground_truth_has_no_masks(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"a": {"good": 1, "bad": 1}}, masks=False)
    s = mvtec.load(str(root), None, None)
    assert not s.has_masks and all(r.mask_path is None for r in s.test)


def test_mvtec_errors_name_paths(tmp_path):
    with pytest.raises(VQFlowError, match="missing_root"):
        mvtec.load(str(tmp_path / "missing_root"), None, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VQFlowError, match="empty"):
        mvtec.load(str(tmp_path / "empty"), None, None)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(VQFlowError, match="afile"):
        mvtec.load(str(tmp_path / "afile"), None, None)
    root = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 1, "crack": 1}})
    with pytest.raises(VQFlowError, match="available: bottle"):
        mvtec.load(str(root), ["cable"], None)
    (root / "cable" / "train" / "good").mkdir(parents=True)
    write_rgb(root / "cable" / "test" / "good" / "000.png", 1)
    with pytest.raises(VQFlowError, match="cable/train/good"):
        mvtec.load(str(root), None, None)


def test_mvtec_good_folders_match_any_case(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"a": {"good": 2, "crack": 1}, "b": {"good": 2, "dent": 1}})
    (root / "a" / "train" / "good").rename(root / "a" / "train" / "Good")
    (root / "b" / "test" / "good").rename(root / "b" / "test" / "GOOD")
    s = mvtec.load(str(root), None, None)
    assert s.classes == ["a", "b"] and len(s.train) == 6
    assert [r.label for r in s.test if r.cls == "b"] == [0, 0, 1]  # test/GOOD holds normals (no mask needed)
    assert all("/test/GOOD/" in r.path for r in s.test if r.cls == "b" and r.label == 0)
    assert visa.load(str(root), ["a"], None).classes == ["a"]  # the VisA conversion reads the same layout


def test_mvtec_good_and_Good_side_by_side_is_refused(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"a": {"good": 1, "crack": 1}})
    write_rgb(root / "a" / "test" / "Good" / "900.png", 9)
    if len(list((root / "a" / "test").iterdir())) < 3:
        pytest.skip("case-insensitive filesystem: Good is good")
    with pytest.raises(VQFlowError, match=r"a/test holds both Good/ and good/; merge them"):
        mvtec.load(str(root), None, None)


def test_mvtec_train_without_good_folder_is_named(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"a": {"good": 1, "crack": 1}, "b": {"good": 1, "dent": 1}})
    (root / "b" / "train" / "good").rename(root / "b" / "train" / "normal")
    expected = (
        rf"{root / 'b' / 'train'} has no good/ folder \(it holds normal/\); put .* in {root / 'b' / 'train' / 'good'}"
    )
    with pytest.raises(VQFlowError, match=expected):
        mvtec.load(str(root), None, None)
    with pytest.raises(VQFlowError, match=expected):
        mvtec.load(str(root), ["b"], None)
    assert mvtec.load(str(root), ["a"], None).classes == ["a"]  # a broken class left out does not matter


def test_mvtec_missing_mask_fails_at_load(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 1, "crack": 2}})
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(VQFlowError, match="001_mask.png"):
        mvtec.load(str(root), None, None)


def test_mvtec_class_without_test_images(tmp_path):
    root = mvtec_tree(tmp_path / "mv", {"bottle": {}})
    with pytest.raises(VQFlowError, match="bottle/test"):
        load_data([f"mvtec:{root}"])


def test_visa_original_csv(tmp_path):
    root = visa_original_tree(tmp_path / "visa", ["candle", "pcb1"], n_train=3, n_good=2, n_bad=2)
    s = visa.load(str(root), None, None)
    assert s.classes == ["candle", "pcb1"] and s.has_masks
    assert len(s.train) == 6 and len(s.test) == 8 and sum(r.label for r in s.test) == 4
    for r in s.test:
        assert (r.mask_path is not None) == (r.label == 1)
    bad = next(r for r in s.test if r.label == 1)
    assert bad.path.endswith("candle/Data/Images/Anomaly/000.JPG")
    assert bad.mask_path.endswith("candle/Data/Masks/Anomaly/000.png")
    m = ImageDataset([bad], 10)[0].mask  # 0/1-valued mask binarises > 0
    assert m.sum() > 0 and set(m.unique().tolist()) == {0.0, 1.0}
    assert visa.load(str(root), ["pcb1"], None).classes == ["pcb1"]
    with pytest.raises(VQFlowError, match="available: candle, pcb1"):
        visa.load(str(root), ["fryum"], None)


def test_visa_original_missing_mask(tmp_path):
    root = visa_original_tree(tmp_path / "visa", ["candle"])
    (root / "candle/Data/Masks/Anomaly/001.png").unlink()
    with pytest.raises(VQFlowError, match="Anomaly/001.png"):
        visa.load(str(root), None, None)


@pytest.mark.parametrize("suffix", ["", "_mask"])
def test_visa_converted_layout(tmp_path, suffix):
    root = mvtec_tree(tmp_path / "visa_pytorch", {"candle": {"good": 2, "bad": 2}}, mask_suffix=suffix, ext=".JPG")
    s = visa.load(str(root), None, None)
    assert s.classes == ["candle"] and len(s.train) == 3 and len(s.test) == 4
    masks = [r.mask_path for r in s.test if r.label == 1]
    assert masks and all(m.endswith(f"{suffix}.png") for m in masks)
    assert all(np.asarray(read_mask(m)).any() for m in masks)
