"""Custom folder format: MVTec-layout folder, YAML description, CSV list."""

from __future__ import annotations

import pytest

from data_trees import mvtec_tree, write_mask, write_rgb
from vqflow.data import folder
from vqflow.errors import VQFlowError


def _yaml_tree(root, n_normal=5, test_dir=False):
    for i in range(n_normal):
        write_rgb(root / "good" / f"{i}.png", i)
    for d in ("crack", "hole"):
        write_rgb(root / d / "a.png", 50)
        write_mask(root / "masks" / d / "a_mask.png")
    if test_dir:
        write_rgb(root / "good_test" / "t.png", 60)


def test_mvtec_layout_folder_and_single_class(tmp_path):
    root = mvtec_tree(tmp_path / "data", {"widget": {"good": 1, "bad": 1}})
    s = folder.load(str(root), None, None)
    assert s.classes == ["widget"] and len(s.train) == 3 and len(s.test) == 2
    one = folder.load(str(root / "widget"), None, None)
    assert one.classes == ["widget"] and one.has_masks


def test_single_class_folder_good_in_any_case_or_named(tmp_path):
    root = mvtec_tree(tmp_path / "data", {"widget": {"good": 1, "bad": 1}})
    (root / "widget" / "train" / "good").rename(root / "widget" / "train" / "Good")
    (root / "widget" / "test" / "good").rename(root / "widget" / "test" / "Good")
    one = folder.load(str(root / "widget"), None, None)
    assert one.classes == ["widget"] and len(one.train) == 3 and [r.label for r in one.test] == [0, 1]
    (root / "widget" / "train" / "Good").rename(root / "widget" / "train" / "normal")
    with pytest.raises(VQFlowError, match=r"widget/train has no good/ folder \(it holds normal/\)"):
        folder.load(str(root / "widget"), None, None)


def test_yaml_with_ratio_split_is_seeded_and_disjoint(tmp_path):
    _yaml_tree(tmp_path)
    spec = tmp_path / "part.yaml"
    spec.write_text(
        "name: part\nnormal_dir: good\nabnormal_dirs: [crack, hole]\nmask_dir: masks\ntest_ratio: 0.4\nseed: 3\n"
    )
    s = folder.load(str(spec), None, None)
    assert s.classes == ["part"] and s.has_masks
    assert len(s.train) == 3 and len(s.test) == 4 and sum(r.label for r in s.test) == 2
    normals_test = {r.path for r in s.test if r.label == 0}
    assert not normals_test & {r.path for r in s.train}
    again = folder.load(str(spec), None, None)
    assert [r.path for r in again.train] == [r.path for r in s.train]
    assert all(r.mask_path and r.mask_path.endswith("a_mask.png") for r in s.test if r.label == 1)


def test_yaml_with_normal_test_dir_and_errors(tmp_path):
    _yaml_tree(tmp_path, test_dir=True)
    spec = tmp_path / "p.yml"
    spec.write_text("normal_dir: good\nabnormal_dir: crack\nnormal_test_dir: good_test\n")
    s = folder.load(str(spec), None, None)
    assert s.classes == ["p"] and len(s.train) == 5 and len(s.test) == 2 and not s.has_masks
    spec.write_text("normal_dir: good\nabnormal_dri: crack\n")
    with pytest.raises(VQFlowError, match="abnormal_dir"):
        folder.load(str(spec), None, None)
    spec.write_text("normal_dir: nothing_here\nabnormal_dir: crack\n")
    with pytest.raises(VQFlowError, match="nothing_here"):
        folder.load(str(spec), None, None)
    spec.write_text("normal_dir: good\nabnormal_dir: crack\nmask_dir: masks\n")
    (tmp_path / "masks" / "crack" / "a_mask.png").unlink()
    with pytest.raises(VQFlowError, match="a_mask.png"):
        folder.load(str(spec), None, None)


def test_csv_list(tmp_path):
    for i in range(3):
        write_rgb(tmp_path / "img" / f"{i}.png", i)
    write_rgb(tmp_path / "img" / "bad.png", 9)
    write_mask(tmp_path / "img" / "bad_mask.png")
    csv = tmp_path / "list.csv"
    csv.write_text(
        "path,label,class,split,mask\n"
        "img/0.png,0,nut,train,\nimg/1.png,normal,nut,train,\nimg/2.png,0,nut,test,\n"
        "img/bad.png,anomaly,nut,test,img/bad_mask.png\n"
    )
    s = folder.load(str(csv), None, None)
    assert len(s.train) == 2 and len(s.test) == 2 and s.has_masks
    assert [r.label for r in s.test] == [0, 1] and s.test[1].mask_path == str(tmp_path / "img" / "bad_mask.png")
    csv.write_text("path,label,class,split\nimg/0.png,0,nut,test\nimg/bad.png,1,nut,test\n")
    with pytest.raises(VQFlowError, match="class nut has no training images in .*list.csv"):
        folder.load(str(csv), None, None)
    csv.write_text("path,label,class,split,mask\nimg/0.png,0,nut,train,\nimg/bad.png,1,nut,test,img/x_mask.png\n")
    with pytest.raises(VQFlowError, match="x_mask.png"):
        folder.load(str(csv), None, None)


def test_other_paths_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(VQFlowError, match="notes.txt"):
        folder.load(str(tmp_path / "notes.txt"), None, None)
    with pytest.raises(VQFlowError, match="absent"):
        folder.load(str(tmp_path / "absent"), None, None)
