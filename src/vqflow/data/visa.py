"""VisA loader: the original release (split_csv/1cls.csv) or its MVTec-layout conversion.

Original: root/split_csv/1cls.csv with columns object,split,label,image,mask; label is
'normal' or 'anomaly'; paths relative to root (candle/Data/Images/Normal/0000.JPG,
candle/Data/Masks/Anomaly/000.png). Conversion (e.g. the spot-diff prepare script):
root/<class>/train/good, test/good, test/bad, ground_truth/bad/<stem>.png (or _mask.png).
Masks hold 0/255 or 0/1; both binarise with > 0.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vqflow.data import mvtec
from vqflow.data.checks import check_requested_classes, require_dir
from vqflow.data.sample import Record
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
CSV_COLUMNS = ("object", "split", "label", "image", "mask")


def load(root: str | None, classes: list[str] | None, normal: list[int] | None = None) -> Splits:
    """Load VisA from `root`, choosing the original or converted layout by split_csv/1cls.csv."""
    base = require_dir(root, "visa")
    if (base / SPLIT_CSV).is_file():
        return load_original(base, classes)
    return mvtec.load_tree(str(base), classes, fmt="visa")


def load_original(base: Path, classes: list[str] | None) -> Splits:
    """Load the original VisA release through its 1cls split CSV."""
    csv_path = base / SPLIT_CSV
    rows = _read_rows(csv_path)
    available = sorted({row["object"] for row in rows})
    chosen = set(check_requested_classes(classes, available, str(csv_path)))
    train: list[Record] = []
    test: list[Record] = []
    for n, row in enumerate(rows, start=2):
        cls = row["object"]
        if cls not in chosen:
            continue
        label = _label(row["label"], csv_path, n)
        image = str(base / row["image"])
        split = row["split"].strip().lower()
        if split == "train":
            if label != 0:
                continue  # unsupervised: anomalies never train (1cls has none there anyway)
            train.append(Record(image, 0, cls))
        elif split == "test":
            mask = None
            if label == 1:
                mask = _mask_path(base, row.get("mask") or "", csv_path, n)
            test.append(Record(image, label, cls, mask))
        else:
            raise VQFlowError(f"{csv_path} line {n}: split must be 'train' or 'test', got {row['split']!r}")
    for cls in sorted(chosen):
        if not any(r.cls == cls for r in train):
            raise VQFlowError(f"class {cls} has no training images in {csv_path}; check its train rows")
        if not any(r.cls == cls for r in test):
            raise VQFlowError(f"class {cls} has no test images in {csv_path}; check its test rows")
    return Splits(train, test, True, frozenset(chosen))


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    """Rows of the split CSV, checking its header."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise VQFlowError(f"{csv_path} lacks column(s) {', '.join(missing)}; expected {','.join(CSV_COLUMNS)}")
            return list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise VQFlowError(f"cannot read {csv_path}: {exc}") from exc


def _label(value: str, csv_path: Path, line: int) -> int:
    """'normal' -> 0, 'anomaly' -> 1."""
    v = value.strip().lower()
    if v == "normal":
        return 0
    if v == "anomaly":
        return 1
    raise VQFlowError(f"{csv_path} line {line}: label must be 'normal' or 'anomaly', got {value!r}")


def _mask_path(base: Path, rel: str, csv_path: Path, line: int) -> str:
    """Absolute mask path of an anomaly row; the file must exist."""
    if not rel.strip():
        raise VQFlowError(f"{csv_path} line {line}: anomaly row has no mask; add its mask path")
    path = base / rel.strip()
    if not path.is_file():
        raise VQFlowError(f"mask {path} is missing (listed in {csv_path} line {line}); restore the file")
    return str(path)
