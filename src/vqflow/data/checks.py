"""Shared input checks for the loaders: one VQFlowError, naming the path, per problem."""

from __future__ import annotations

import os
from pathlib import Path

from vqflow.errors import VQFlowError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def require_dir(root: str | os.PathLike | None, fmt: str) -> Path:
    """Return `root` as a Path after checking it is an existing, non-empty directory."""
    if root is None or str(root) == "":
        raise VQFlowError(f"{fmt}: no data path given; use --data {fmt}:PATH")
    path = Path(root).expanduser()
    if not path.exists():
        raise VQFlowError(f"data folder {path} does not exist; check the --data {fmt}:PATH")
    if not path.is_dir():
        raise VQFlowError(f"data path {path} is not a folder; give the dataset's root folder")
    if not any(path.iterdir()):
        raise VQFlowError(f"data folder {path} is empty; put the dataset there or fix the path")
    return path


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder` (sorted by name, hidden files skipped); [] if absent."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def check_requested_classes(requested: list[str] | None, available: list[str], where: str) -> list[str]:
    """Return the classes to load: all available when `requested` is None or ['all']."""
    if not available:
        raise VQFlowError(f"no classes found in {where}; check the dataset layout")
    if requested is None or list(requested) == ["all"]:
        return sorted(available)
    missing = [c for c in requested if c not in available]
    if missing:
        raise VQFlowError(f"class {', '.join(missing)} not found in {where}; available: {', '.join(sorted(available))}")
    return list(dict.fromkeys(requested))
