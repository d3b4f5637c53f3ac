"""Spec parsing and multi-dataset union."""

from __future__ import annotations

import re

import pytest

from data_trees import fmnist_tree, mvtec_tree, visa_original_tree
from tiny_run import tiny_args
from vqflow.cli import main
from vqflow.data import load_data, parse_spec
from vqflow.errors import VQFlowError


def test_parse_spec():
    assert parse_spec("mvtec:/data/mv") == ("mvtec", "/data/mv")
    assert parse_spec("fmnist") == ("fmnist", None)
    assert parse_spec("fmnist:/x") == ("fmnist", "/x")
    assert parse_spec("demo") == ("demo", None)
    assert parse_spec("folder:C:/a:b") == ("folder", "C:/a:b")
    with pytest.raises(VQFlowError, match="known: mvtec:PATH.*demo"):
        parse_spec("kitti:/x")
    with pytest.raises(VQFlowError, match="mvtec:PATH"):
        parse_spec("mvtec")


def test_union_prefixes_shared_class_names(tmp_path):
    mv = mvtec_tree(tmp_path / "mv", {"candle": {"good": 1, "bad": 1}, "bottle": {"good": 1, "bad": 1}})
    vi = visa_original_tree(tmp_path / "visa", ["candle", "pcb1"])
    s = load_data([f"mvtec:{mv}", f"visa:{vi}"])
    assert s.classes == ["bottle", "mvtec/candle", "pcb1", "visa/candle"]
    assert len(s.train) == 3 + 3 + 3 + 3 and len(s.test) == 2 + 2 + 4 + 4
    assert s.has_masks and s.mask_classes == set(s.classes)
    picked = load_data([f"mvtec:{mv}", f"visa:{vi}"], classes=["candle"])
    assert picked.classes == ["mvtec/candle", "visa/candle"]
    assert load_data([f"mvtec:{mv}", f"visa:{vi}"], classes=["visa/candle"]).classes == ["visa/candle"]
    with pytest.raises(VQFlowError, match="available: bottle"):
        load_data([f"mvtec:{mv}", f"visa:{vi}"], classes=["cable"])


def test_union_with_maskless_dataset(tmp_path):
    mv = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 1, "bad": 1}})
    fmnist_tree(tmp_path / "fm")
    s = load_data([f"mvtec:{mv}", f"fmnist:{tmp_path / 'fm'}"], normal=[0, 1, 2, 3, 4])
    assert s.classes == ["bottle", "fmnist"] and s.mask_classes == {"bottle"}


def test_single_spec_errors_name_paths(tmp_path):
    with pytest.raises(VQFlowError, match="nowhere"):
        load_data([f"mvtec:{tmp_path / 'nowhere'}"])
    mv = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 1}})
    with pytest.raises(VQFlowError, match="available: bottle"):
        load_data([f"mvtec:{mv}"], classes=["zipper"])
    assert load_data([f"mvtec:{mv}"], classes=["all"]).classes == ["bottle"]
    with pytest.raises(VQFlowError, match="no data"):
        load_data([])


def test_union_of_roots_sharing_a_class_name_names_the_clash(tmp_path):
    a = mvtec_tree(tmp_path / "a", {"bottle": {"good": 1, "bad": 1}})
    b = mvtec_tree(tmp_path / "b", {"bottle": {"good": 1, "bad": 1}, "cable": {"good": 1, "bad": 1}})
    clash = re.escape(f"class 'bottle' is in both --data mvtec:{a} and --data mvtec:{b}") + ".*rename.*--classes"
    with pytest.raises(VQFlowError, match=clash):
        load_data([f"mvtec:{a}", f"mvtec:{b}"])
    with pytest.raises(VQFlowError, match=clash):
        load_data([f"mvtec:{a}", f"mvtec:{b}"], classes=["bottle"])
    assert load_data([f"mvtec:{a}", f"mvtec:{b}"], classes=["cable"]).classes == ["cable"]  # the clash is left out
    assert load_data([f"mvtec:{a}", f"folder:{b}"]).classes == ["cable", "folder/bottle", "mvtec/bottle"]
    with pytest.raises(VQFlowError, match=re.escape(f"--data mvtec:{a} is given twice; give it once")):
        load_data([f"mvtec:{a}", f"mvtec:{a}/"])


@pytest.mark.parametrize("classes", [[], [""], [" ", ""], ","])
def test_empty_class_list_is_refused_up_front(tmp_path, classes):
    mv = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 1, "bad": 1}})
    with pytest.raises(VQFlowError, match=r"^--classes \(data.classes\) names no class; give NAME,NAME,\.\.\. or all"):
        load_data([f"mvtec:{mv}"], classes=classes)
    with pytest.raises(VQFlowError, match=r"^--classes"):
        load_data([f"mvtec:{mv}", f"fmnist:{tmp_path / 'no_fmnist_needed'}"], classes=classes)


@pytest.mark.parametrize("value", [",", " , "])
def test_cli_empty_classes_names_the_option(tmp_path, capsys, value):
    mv = mvtec_tree(tmp_path / "mv", {"bottle": {"good": 2, "bad": 1}})
    code = main(["fit", "--data", f"mvtec:{mv}", "--classes", value, "--out", str(tmp_path / "run"), *tiny_args(1)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --classes") and "\n" not in err
    assert not (tmp_path / "run").exists()
