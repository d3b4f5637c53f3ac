"""The embedded demo set: real textures from scikit-image's wheel with synthetic defects.

Built once (deterministic seed) into <cache>/demo-v2 in MVTec layout, where cache is
$VQFLOW_CACHE or ~/.cache/vqflow; written to a temporary folder and renamed atomically,
then loaded with the MVTec loader. Train and test crops are drawn alike from the whole of
each picture, so that normal test images come from the training distribution as in MVTec
AD (demo-v1 took test crops from the bottom of each picture, whose structures the training
crops lacked: its false alarms and tissue's image AUROC measured that mismatch, not the
model). Crops may overlap; half of the test crops get a defect with a pixel mask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vqflow.cache import cache_dir
from vqflow.data import mvtec
from vqflow.data.demo_defects import DEFECTS
from vqflow.data.splits import Splits
from vqflow.errors import VQFlowError

VERSION = "demo-v2"
SEED = 20240611
SIZE = 256
N_TRAIN = 48
N_TEST_GOOD = 12
N_TEST_BAD = 12
WINDOW = 184  # source window before rotation; the centre CROP of it is kept
CROP = 160
MARKER = "COMPLETE"

# class name -> (skimage.data function, RGB tint applied to grayscale textures)
TEXTURES = {
    "brick": ("brick", (1.0, 0.78, 0.66)),
    "grass": ("grass", (0.82, 1.0, 0.7)),
    "gravel": ("gravel", (0.95, 0.92, 0.85)),
    "tissue": ("immunohistochemistry", None),
}


def demo_root(cache: str | os.PathLike | None = None) -> Path:
    """Path of the built demo tree, building it first if it is not there yet."""
    target = (Path(cache).expanduser() if cache else cache_dir()) / VERSION
    if (target / MARKER).is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=target.parent))
    except OSError as exc:
        raise VQFlowError(
            f"cannot write the demo set under {target.parent}: {exc}; set VQFLOW_CACHE to a writable folder"
        ) from exc
    try:
        build_tree(tmp)
        (tmp / MARKER).write_text(VERSION + "\n")
        if target.exists() and not (target / MARKER).is_file():
            shutil.rmtree(target)  # a stale, incomplete tree from an older crash
        os.rename(tmp, target)
    except OSError:
        if not (target / MARKER).is_file():  # not a lost race with another builder
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load(root: str | None = None, classes: list[str] | None = None, normal: list[int] | None = None) -> Splits:
    """Build (once) and load the demo set; `root`, if given, is the cache folder to use."""
    return mvtec.load_tree(str(demo_root(root)), classes, fmt="demo")


def build_tree(out: Path) -> None:
    """Write every class of the demo set in MVTec layout under `out`."""
    textures = {name: load_texture(fn, tint) for name, (fn, tint) in TEXTURES.items()}
    names = list(textures)
    for k, name in enumerate(names):
        rng = np.random.default_rng([SEED, k])
        texture = textures[name]
        donor = textures[names[(k + 1) % len(names)]]
        _write_class(out / name, texture, donor, rng)


def load_texture(fn: str, tint: tuple[float, float, float] | None) -> np.ndarray:
    """A skimage.data image as HxWx3 float in [0, 1] (grayscale tinted)."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, fn)(), dtype=np.float64) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None] * np.asarray(tint if tint is not None else (1.0, 1.0, 1.0))
    return np.clip(arr[:, :, :3], 0.0, 1.0)


def _write_class(folder: Path, texture: np.ndarray, donor: np.ndarray, rng: np.random.Generator) -> None:
    """Train crops (good), test crops (good and defective) and masks of one class."""
    donor_big = np.asarray(Image.fromarray(_to_uint8(donor)).resize((SIZE * 2, SIZE * 2)), dtype=np.float64) / 255.0
    for i in range(N_TRAIN):
        _save(folder / "train" / "good" / f"{i:03d}.png", _crop(texture, rng))
    for i in range(N_TEST_GOOD):
        _save(folder / "test" / "good" / f"{i:03d}.png", _crop(texture, rng))
    kinds = list(DEFECTS)
    for i in range(N_TEST_BAD):
        kind = kinds[i % len(kinds)]
        img = _crop(texture, rng)
        for _ in range(20):  # redraw until the defect is visible at mask level
            bad, mask = DEFECTS[kind](img, rng, donor_big)
            if mask.sum() >= 12:
                break
        _save(folder / "test" / kind / f"{i:03d}.png", bad)
        mask_path = folder / "ground_truth" / kind / f"{i:03d}_mask.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(mask_path, compress_level=1)


def _crop(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A SIZE x SIZE crop of `region` with small rotation, flip and brightness jitter."""
    h, w = region.shape[:2]
    y, x = int(rng.integers(0, h - WINDOW + 1)), int(rng.integers(0, w - WINDOW + 1))
    window = Image.fromarray(_to_uint8(region[y : y + WINDOW, x : x + WINDOW]))
    window = window.rotate(float(rng.uniform(-6.0, 6.0)), resample=Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    m = (WINDOW - CROP) // 2
    crop = window.crop((m, m, m + CROP, m + CROP)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(crop, dtype=np.float64) / 255.0 * rng.uniform(0.94, 1.06), 0.0, 1.0)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _save(path: Path, img: np.ndarray) -> None:
    """Write an RGB PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(img), "RGB").save(path, compress_level=1)
