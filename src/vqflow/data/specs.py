"""Parse --data specs (FORMAT[:PATH]) and unify one or more datasets into one Splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

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
ONE_CLASS_FORMATS = frozenset({"cifar10", "fmnist"})  # one fixed class each: nothing to rename
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
    classes = requested_classes(classes)
    parsed = [parse_spec(s) for s in specs]
    if len(parsed) == 1:
        fmt, path = parsed[0]
        splits = LOADERS[fmt](path, classes, normal)
        _check_nonempty(splits, specs[0])
        return splits
    loaded = [(fmt, path, LOADERS[fmt](path, None, normal)) for fmt, path in parsed]
    return _select(_unify(loaded, classes), classes, specs)


def requested_classes(classes: list[str] | str | None) -> list[str] | None:
    """The class names asked for (None: all); an empty list is refused here, not found empty later."""
    if classes is None:
        return None
    items = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [str(c).strip() for c in items if str(c).strip()]
    if not names:
        raise VQFlowError("--classes (data.classes) names no class; give NAME,NAME,... or all (the default)")
    return None if names == ["all"] else names


def _unify(loaded: list[tuple[str, str | None, Splits]], classes: list[str] | None = None) -> Splits:
    """Concatenate splits, prefixing class names that occur in more than one of them."""
    owners: dict[str, int] = {}
    for _, _, s in loaded:
        for cls in s.classes:
            owners[cls] = owners.get(cls, 0) + 1

    def rename(cls: str, fmt: str) -> str:
        return f"{fmt}/{cls}" if owners[cls] > 1 else cls

    _check_clashes([(fmt, path, {c: rename(c, fmt) for c in s.classes}) for fmt, path, s in loaded], classes)
    train: list[Record] = []
    test: list[Record] = []
    mask_classes: set[str] = set()
    for fmt, _, s in loaded:
        train += [replace(r, cls=rename(r.cls, fmt)) for r in s.train]
        test += [replace(r, cls=rename(r.cls, fmt)) for r in s.test]
        mask_classes |= {rename(c, fmt) for c in s.mask_classes}
    return Splits(train, test, bool(mask_classes), frozenset(mask_classes))


def _check_clashes(named: list[tuple[str, str | None, dict[str, str]]], classes: list[str] | None) -> None:
    """Two specs whose (prefixed) class names still coincide cannot be told apart: name the class and both roots.

    `named` holds (format, path, {class: unified name}) per spec; clashes on classes that --classes leaves
    out do not matter, so they pass."""
    seen: dict[str, tuple[str, str | None]] = {}
    for fmt, path, names in named:
        for cls, unified in names.items():
            if unified in seen and _is_selected(unified, classes):
                raise _clash_error(cls, seen[unified], (fmt, path))
        seen.update({unified: (fmt, path) for unified in names.values()})


def _is_selected(unified: str, classes: list[str] | None) -> bool:
    """Whether --classes keeps this unified class name (by unified or original name, as _select does)."""
    return classes is None or any(unified == n or unified.split("/", 1)[-1] == n for n in classes)


def _clash_error(cls: str, first: tuple[str, str | None], second: tuple[str, str | None]) -> VQFlowError:
    """The message for class `cls` found in two specs: the same spec twice, or two roots sharing a class name."""
    spec_a, spec_b = (f"{fmt}:{path}" if path else fmt for fmt, path in (first, second))
    if first[0] == second[0] and _same_path(first[1], second[1]):
        return VQFlowError(f"--data {spec_a} is given twice; give it once")
    if first[0] in ONE_CLASS_FORMATS:
        fix = "give only one of them"
    else:
        fix = f"rename {cls!r} (its folder, or its name in a CSV/YAML) in one of them, or leave it out with --classes"
    return VQFlowError(
        f"class {cls!r} is in both --data {spec_a} and --data {spec_b}, and the format prefix cannot tell them "
        f"apart; {fix}"
    )


def _same_path(a: str | None, b: str | None) -> bool:
    """Whether two spec paths name the same file or folder (None: the format's default location)."""
    if a is None or b is None:
        return a == b
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


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
