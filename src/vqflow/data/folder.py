"""Custom data: an MVTec-layout folder, a YAML description, or a CSV list.

1. A folder in MVTec layout (<class>/train/good, <class>/test/<defect>, optional
   <class>/ground_truth/<defect>/<stem>_mask.png), or a single class folder holding
   train/good and test/ directly (the class is named after the folder).
2. A YAML file (paths relative to the file), one class as a mapping, or several as a list:
       name: bottle                 # class name (default: the YAML file's stem)
       normal_dir: good             # normal images (training, and test if no normal_test_dir)
       abnormal_dirs: [crack, dent] # or abnormal_dir: crack; anomalous test images
       mask_dir: masks              # optional: <stem>.png or <stem>_mask.png, directly in it
                                    #   or in mask_dir/<abnormal dir name>/
       normal_test_dir: good_test   # optional: normal test images
       test_ratio: 0.2              # without normal_test_dir: share of normals held out
       seed: 0                      #   for test, chosen with this seed
3. A CSV file with header path,label,class,split[,mask] (paths relative to the CSV);
   label 0/1 (or normal/anomaly), split train/test; anomalies only in test.
"""

from __future__ import annotations

import csv
import difflib
from pathlib import Path

import numpy as np
import yaml

from vqflow.data import mvtec
from vqflow.data.checks import check_requested_classes, image_files
from vqflow.data.sample import Record
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

YAML_KEYS = ("name", "normal_dir", "abnormal_dir", "abnormal_dirs", "mask_dir", "normal_test_dir", "test_ratio", "seed")
CSV_COLUMNS = ("path", "label", "class", "split")
LABELS = {"0": 0, "normal": 0, "good": 0, "ok": 0, "1": 1, "anomaly": 1, "anomalous": 1, "abnormal": 1, "bad": 1}


def load(root: str | None, classes: list[str] | None, normal: list[int] | None = None) -> Splits:
    """Load custom data from a folder, a .yaml/.yml file or a .csv file."""
    if root is None or str(root) == "":
        raise VQFlowError("folder: no data path given; use --data folder:PATH")
    path = Path(root).expanduser()
    if not path.exists():
        raise VQFlowError(f"data path {path} does not exist; check the --data folder:PATH")
    if path.is_dir():
        if (path / "train").is_dir():  # one class folder (load_class names a train/ without good/)
            return _single_class_folder(path, classes)
        return mvtec.load_tree(str(path), classes, fmt="folder")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        splits = load_yaml(path)
    elif suffix == ".csv":
        splits = load_csv(path)
    else:
        raise VQFlowError(f"data path {path} is neither a folder, a .yaml nor a .csv file; see the folder format docs")
    return _filter_classes(splits, classes, str(path))


def _single_class_folder(path: Path, classes: list[str] | None) -> Splits:
    """A folder that is itself one MVTec-layout class."""
    cls = path.resolve().name
    check_requested_classes(classes, [cls], str(path))
    train, test, has_masks = mvtec.load_class(path, cls)
    return Splits(train, test, has_masks, frozenset({cls}) if has_masks else frozenset())


def _filter_classes(splits: Splits, classes: list[str] | None, where: str) -> Splits:
    """Keep only the requested classes."""
    chosen = set(check_requested_classes(classes, splits.classes, where))
    return Splits(
        [r for r in splits.train if r.cls in chosen],
        [r for r in splits.test if r.cls in chosen],
        bool(splits.mask_classes & chosen),
        frozenset(splits.mask_classes & chosen),
    )


def load_yaml(path: Path) -> Splits:
    """Classes described by a YAML file (one mapping, or a list of them)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise VQFlowError(f"cannot read {path}: {str(exc).splitlines()[0]}; fix the YAML") from exc
    entries = doc if isinstance(doc, list) else [doc]
    train: list[Record] = []
    test: list[Record] = []
    mask_classes: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            raise VQFlowError(f"{path} must hold a mapping with keys {', '.join(YAML_KEYS)} (or a list of them)")
        cls_train, cls_test, has_masks, cls = _yaml_class(entry, path)
        if any(r.cls == cls for r in train):
            raise VQFlowError(f"{path}: class name {cls!r} is used twice; give each entry its own name")
        train += cls_train
        test += cls_test
        if has_masks:
            mask_classes.add(cls)
    return Splits(train, test, bool(mask_classes), frozenset(mask_classes))


def _yaml_class(entry: dict, path: Path) -> tuple[list[Record], list[Record], bool, str]:
    """Records of one YAML class entry."""
    for key in entry:
        if key not in YAML_KEYS:
            near = difflib.get_close_matches(str(key), YAML_KEYS, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; known keys: {', '.join(YAML_KEYS)}"
            raise VQFlowError(f"{path}: unknown key {key!r}{hint}")
    base = path.parent
    cls = str(entry.get("name") or path.stem)
    if "normal_dir" not in entry:
        raise VQFlowError(f"{path}: key 'normal_dir' is required (folder of normal images)")
    normal_dir = _dir(base, entry["normal_dir"], path, "normal_dir")
    normals = image_files(normal_dir)
    abnormal = entry.get("abnormal_dirs", entry.get("abnormal_dir", []))
    abnormal_dirs = [
        _dir(base, d, path, "abnormal_dirs") for d in ([abnormal] if isinstance(abnormal, str) else abnormal)
    ]
    mask_dir = _dir(base, entry["mask_dir"], path, "mask_dir") if entry.get("mask_dir") else None
    if entry.get("normal_test_dir"):
        train_files = normals
        test_normals = image_files(_dir(base, entry["normal_test_dir"], path, "normal_test_dir"))
    else:
        train_files, test_normals = _split_normals(normals, entry, path)
    if not train_files:
        raise VQFlowError(f"class {cls} has no training images in {normal_dir}; add normal images there")
    test = [Record(str(p), 0, cls) for p in test_normals]
    for d in abnormal_dirs:
        for p in image_files(d):
            mask = _yaml_mask(mask_dir, d.name, p.stem) if mask_dir else None
            test.append(Record(str(p), 1, cls, mask))
    if not test:
        raise VQFlowError(f"class {cls} in {path} has no test images; add abnormal_dirs or normal_test_dir")
    return [Record(str(p), 0, cls) for p in train_files], test, mask_dir is not None, cls


def _split_normals(normals: list[Path], entry: dict, path: Path) -> tuple[list[Path], list[Path]]:
    """Hold out a seeded random share of the normal images for testing."""
    ratio = entry.get("test_ratio", 0.2)
    seed = entry.get("seed", 0)
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise VQFlowError(f"{path}: test_ratio must be a number in [0, 1), got {ratio!r}")
    if not isinstance(seed, int):
        raise VQFlowError(f"{path}: seed must be an integer, got {seed!r}")
    n_test = int(round(len(normals) * ratio))
    order = np.random.default_rng(seed).permutation(len(normals))
    held = set(order[:n_test].tolist())
    return [p for i, p in enumerate(normals) if i not in held], [p for i, p in enumerate(normals) if i in held]


def _dir(base: Path, value: object, path: Path, key: str) -> Path:
    """A folder named in the YAML, relative to the YAML's folder; it must exist."""
    if not isinstance(value, str) or not value:
        raise VQFlowError(f"{path}: key '{key}' must be a folder path, got {value!r}")
    folder = (base / value).expanduser()
    if not folder.is_dir():
        raise VQFlowError(f"folder {folder} (key '{key}' in {path}) does not exist; fix the path")
    return folder


def _yaml_mask(mask_dir: Path, defect: str, stem: str) -> str:
    """Mask for `stem` in mask_dir/<defect>/ or directly in mask_dir."""
    sub = mask_dir / defect
    if sub.is_dir():
        return mvtec.find_mask(sub, stem)
    return mvtec.find_mask(mask_dir, stem)


def load_csv(path: Path) -> Splits:
    """Records listed in a CSV file with columns path,label,class,split[,mask]."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in fields]
            if missing:
                raise VQFlowError(
                    f"{path} lacks column(s) {', '.join(missing)}; expected path,label,class,split[,mask]"
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VQFlowError(f"cannot read {path}: {exc}") from exc
    base = path.parent
    train: list[Record] = []
    test: list[Record] = []
    has_mask_column = "mask" in fields
    for n, row in enumerate(rows, start=2):
        label = LABELS.get(row["label"].lower())
        if label is None:
            raise VQFlowError(f"{path} line {n}: label must be 0/1 or normal/anomaly, got {row['label']!r}")
        cls, split = row["class"], row["split"].lower()
        if not cls or not row["path"]:
            raise VQFlowError(f"{path} line {n}: path and class must not be empty")
        image = str(base / row["path"])
        mask = str(base / row["mask"]) if has_mask_column and row.get("mask") else None
        if split == "train":
            if label != 0:
                raise VQFlowError(f"{path} line {n}: an anomalous image cannot be in the train split; move it to test")
            train.append(Record(image, 0, cls))
        elif split == "test":
            if has_mask_column and label == 1:
                if mask is None:
                    raise VQFlowError(f"{path} line {n}: anomalous image {image} has no mask; fill the mask column")
                if not Path(mask).is_file():
                    raise VQFlowError(f"mask {mask} is missing (listed in {path} line {n}); restore the file")
            test.append(Record(image, label, cls, mask if label == 1 else None))
        else:
            raise VQFlowError(f"{path} line {n}: split must be 'train' or 'test', got {row['split']!r}")
    classes = sorted({r.cls for r in train} | {r.cls for r in test})
    for cls in classes:
        if not any(r.cls == cls for r in train):
            raise VQFlowError(f"class {cls} has no training images in {path}; add train rows for it")
    if not test:
        raise VQFlowError(f"{path} lists no test images; add rows with split 'test'")
    mask_classes = frozenset(classes) if has_mask_column else frozenset()
    return Splits(train, test, has_mask_column, mask_classes)
