"""Parse --data specs (FORMAT[:PATH]) and unify one or more datasets into one Splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from vqflow.data import cifar10, demo, fmnist, folder, mvtec, visa
from vqflow.data.sample import Record
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

Loader = Callable[[str | None, list[str] | None, list[int] | None], Splits]

LOADERS: dict[str, Loader] = {
    "mvtec": mvtec.load,
    "visa": visa.load,
    "folder": folder.load,
    "cifar10": cifar10.load,
    "fmnist": fmnist.load,
    "demo": demo.load,
}
PATH_REQUIRED = frozenset({"mvtec", "visa", "folder", "cifar10"})
KNOWN = "mvtec:PATH, visa:PATH, folder:PATH, cifar10:PATH, fmnist[:PATH], demo"


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'mvtec:/data/mvtec' -> ('mvtec', '/data/mvtec'); 'fmnist' -> ('fmnist', None)."""
    fmt, sep, path = str(spec).strip().partition(":")
    fmt = fmt.strip().lower()
    if fmt not in LOADERS:
        raise VQFlowError(f"unknown data format in --data {spec!r}; known: {KNOWN}")
    path = path.strip() if sep else ""
    if fmt in PATH_REQUIRED and not path:
        raise VQFlowError(f"--data {spec!r} needs a path: use {fmt}:PATH")
    return fmt, path or None


def load_data(specs: list[str], classes: list[str] | None = None, normal: list[int] | None = None) -> Splits:
    """Load every spec and unify them; class names shared by two specs get a 'format/' prefix."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise VQFlowError(f"no data given; use --data with one of: {KNOWN}")
    if classes is not None and list(classes) == ["all"]:
        classes = None
    parsed = [parse_spec(s) for s in specs]
    if len(parsed) == 1:
        fmt, path = parsed[0]
        splits = LOADERS[fmt](path, classes, normal)
        _check_nonempty(splits, specs[0])
        return splits
    loaded = [(fmt, path, LOADERS[fmt](path, None, normal)) for fmt, path in parsed]
    return _select(_unify(loaded), classes, specs)


def _unify(loaded: list[tuple[str, str | None, Splits]]) -> Splits:
    """Concatenate splits, prefixing class names that occur in more than one of them."""
    owners: dict[str, int] = {}
    for _, _, s in loaded:
        for cls in s.classes:
            owners[cls] = owners.get(cls, 0) + 1
    train: list[Record] = []
    test: list[Record] = []
    mask_classes: set[str] = set()
    for fmt, path, s in loaded:

        def rename(cls: str, fmt: str = fmt) -> str:
            return f"{fmt}/{cls}" if owners[cls] > 1 else cls

        if any(rename(c) in {r.cls for r in train} for c in s.classes):
            raise VQFlowError(
                f"--data {fmt}:{path} is given twice (its classes clash even with a prefix); give it once"
            )
        train += [replace(r, cls=rename(r.cls)) for r in s.train]
        test += [replace(r, cls=rename(r.cls)) for r in s.test]
        mask_classes |= {rename(c) for c in s.mask_classes}
    return Splits(train, test, bool(mask_classes), frozenset(mask_classes))


def _select(splits: Splits, classes: list[str] | None, specs: list[str]) -> Splits:
    """Keep the requested classes (by unified or original name) of a unified Splits."""
    if classes is None:
        _check_nonempty(splits, ", ".join(specs))
        return splits
    available = splits.classes
    chosen: set[str] = set()
    for name in classes:
        matches = [c for c in available if c == name or c.split("/", 1)[-1] == name]
        if not matches:
            raise VQFlowError(f"class {name} not found in --data {', '.join(specs)}; available: {', '.join(available)}")
        chosen.update(matches)
    out = Splits(
        [r for r in splits.train if r.cls in chosen],
        [r for r in splits.test if r.cls in chosen],
        bool(splits.mask_classes & chosen),
        frozenset(splits.mask_classes & chosen),
    )
    _check_nonempty(out, ", ".join(specs))
    return out


def _check_nonempty(splits: Splits, where: str) -> None:
    """Every class needs training images, and there must be test images."""
    if not splits.test:
        raise VQFlowError(f"no test images found in {where}; check the dataset's test folders")
    trained = {r.cls for r in splits.train}
    for cls in splits.classes:
        if cls not in trained:
            raise VQFlowError(f"class {cls} has no training images in {where}; add normal training images")
