"""A tiny MVTec-layout dataset and a tiny model config for end-to-end engine tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_SET = [
    "data.image_size=64",
    "data.val_fraction=0.25",
    "model.flow_blocks=1,1,1",
    "model.subnet_hidden=16",
    "model.fusion_hidden=16",
    "model.global_dim=16",
    "model.pos_dim=8",
    "model.num_patterns=16",
    "model.num_concepts=4",
    "train.batch_size=4",
    "train.warmup_epochs=1",
    "train.lr=1e-3",
]


def tiny_args(epochs: int = 2) -> list[str]:
    """CLI options for a tiny, fast run."""
    out = ["--epochs", str(epochs), "--quiet"]
    for item in TINY_SET:
        out += ["--set", item]
    return out


def _texture(kind: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    if kind == "stripes":
        base = 128 + 80 * np.sin(x / 3.0 + rng.uniform(0, 6))
    else:
        base = 100 + 60 * np.sin((x + y) / 9.0 + rng.uniform(0, 6)) * np.cos(y / 7.0)
    img = base[..., None] + rng.normal(0, 8, (size, size, 3))
    tint = np.array([1.0, 0.8, 0.6]) if kind == "stripes" else np.array([0.6, 0.9, 1.0])
    return np.clip(img * tint, 0, 255).astype(np.uint8)


def make_tiny_mvtec(root: Path, n_train: int = 8, n_good: int = 3, n_bad: int = 3) -> Path:
    """Two classes of synthetic textures; anomalies are bright squares with masks."""
    rng = np.random.default_rng(0)
    for cls in ("stripes", "waves"):
        base = root / cls
        for i in range(n_train):
            _save(base / "train" / "good" / f"{i:03d}.png", _texture(cls, rng))
        for i in range(n_good):
            _save(base / "test" / "good" / f"{i:03d}.png", _texture(cls, rng))
        for i in range(n_bad):
            img = _texture(cls, rng)
            mask = np.zeros(img.shape[:2], dtype=np.uint8)
            y0, x0 = rng.integers(8, 40, 2)
            img[y0 : y0 + 16, x0 : x0 + 16] = [255, 30, 200]
            mask[y0 : y0 + 16, x0 : x0 + 16] = 255
            _save(base / "test" / "spot" / f"{i:03d}.png", img)
            _save(base / "ground_truth" / "spot" / f"{i:03d}_mask.png", mask)
    return root


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
