"""MVTec AD layout loader: root/<class>/{train/good, test/<defect>, ground_truth/<defect>}.

Masks are looked up as ground_truth/<defect>/<stem>_mask.png (MVTec AD) or <stem>.png
(the VisA conversion). A class with a ground_truth folder must have a mask for every
anomalous test image; classes without one have no pixel ground truth.
The normal folders (train/good, test/good) match in any letter case (Good, GOOD), so a tree
reads the same on case-sensitive and case-insensitive filesystems; a folder with train/ but
no good folder in it is an error, not silently skipped.
"""

from __future__ import annotations

from pathlib import Path

from vqflow.data.checks import check_requested_classes, image_files, require_dir
from vqflow.data.sample import Record
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

GOOD = "good"
MASK_SUFFIXES = ("_mask.png", ".png", "_mask.bmp", ".bmp", "_mask.tif", ".tif")


def load(root: str | None, classes: list[str] | None, normal: list[int] | None = None) -> Splits:
    """Load an MVTec-layout tree; `classes` None means every folder with train/good."""
    return load_tree(root, classes, fmt="mvtec")


def load_tree(root: str | None, classes: list[str] | None, fmt: str) -> Splits:
    """Load any MVTec-layout tree (also used by the VisA conversion, folders and the demo)."""
    base = require_dir(root, fmt)
    available, untrained = _scan_classes(base)
    _check_untrained(untrained, classes)
    chosen = check_requested_classes(classes, available, f"{base} (expected <class>/train/good folders)")
    train: list[Record] = []
    test: list[Record] = []
    mask_classes: set[str] = set()
    for cls in chosen:
        cls_train, cls_test, has_masks = load_class(base / cls, cls)
        train += cls_train
        test += cls_test
        if has_masks:
            mask_classes.add(cls)
    return Splits(train, test, bool(mask_classes), frozenset(mask_classes))


def is_good(name: str) -> bool:
    """Whether a folder name means normal images: 'good' in any letter case."""
    return name.lower() == GOOD


def _good_dirs(parent: Path) -> list[Path]:
    """Subfolders of `parent` named good in any letter case (more than one only on case-sensitive filesystems)."""
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and is_good(p.name))


def good_dir(parent: Path) -> Path | None:
    """The one good folder in `parent` (any letter case), None if absent; two (good and Good) are an error."""
    found = _good_dirs(parent)
    if len(found) > 1:
        names = " and ".join(f"{p.name}/" for p in found)
        raise VQFlowError(f"{parent} holds both {names}; merge them into one {GOOD}/ folder")
    return found[0] if found else None


def _scan_classes(base: Path) -> tuple[list[str], list[Path]]:
    """Names of the class folders (with train/good), and the folders whose train/ has no good folder."""
    available: list[str] = []
    untrained: list[Path] = []
    for p in sorted(base.iterdir()):
        if (p / "train").is_dir():
            if _good_dirs(p / "train"):
                available.append(p.name)
            else:
                untrained.append(p)
    return available, untrained


def _check_untrained(untrained: list[Path], classes: list[str] | None) -> None:
    """A wanted class folder with train/ but no train/good would be dropped without a word: say so instead."""
    if classes is not None and list(classes) != ["all"]:
        untrained = [p for p in untrained if p.name in classes]
    if untrained:
        raise _no_good_error(untrained[0] / "train")


def _no_good_error(train: Path) -> VQFlowError:
    """The error for a class's train/ folder that lacks good/, naming what it holds instead."""
    subdirs = sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []
    found = f"it holds {', '.join(f'{n}/' for n in subdirs)}" if subdirs else "it has no subfolders"
    return VQFlowError(f"{train} has no {GOOD}/ folder ({found}); put the normal training images in {train / GOOD}")


def load_class(folder: Path, cls: str) -> tuple[list[Record], list[Record], bool]:
    """Records of one class folder, and whether it has pixel ground truth."""
    train_dir = good_dir(folder / "train")
    if train_dir is None:
        raise _no_good_error(folder / "train")
    train_files = image_files(train_dir)
    if not train_files:
        raise VQFlowError(f"class {cls} has no training images in {train_dir}; add normal images there")
    train = [Record(str(p), 0, cls) for p in train_files]
    test_dir = folder / "test"
    gt_dir = folder / "ground_truth"
    has_masks = gt_dir.is_dir()
    test: list[Record] = []
    good_dir(test_dir)  # test/good and test/Good side by side: ambiguous, refuse
    defects = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for defect_dir in defects:
        label = 0 if is_good(defect_dir.name) else 1
        for p in image_files(defect_dir):
            mask = None
            if label == 1 and has_masks:
                mask = find_mask(gt_dir / defect_dir.name, p.stem)
            test.append(Record(str(p), label, cls, mask))
    if not test:
        raise VQFlowError(f"class {cls} has no test images in {test_dir}; add test/good and test/<defect> images")
    return train, test, has_masks


def find_mask(mask_dir: Path, stem: str) -> str:
    """Path of the mask for image `stem` in `mask_dir`, or VQFlowError naming the expected file."""
    for suffix in MASK_SUFFIXES:
        candidate = mask_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return str(candidate)
    raise VQFlowError(
        f"mask {mask_dir / (stem + '_mask.png')} is missing (also tried {stem}.png); "
        "add it, or remove the ground_truth folder if the dataset has no masks"
    )
