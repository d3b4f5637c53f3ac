"""Feature cache: the frozen backbone runs once per image; epochs then cost only the flows."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vqflow.data.dataset import ImageDataset
from vqflow.data.sample import collate
from vqflow.engine.progress import progress

FeaturesFn = Callable[[torch.Tensor], list[torch.Tensor]]  # images -> pooled (h1, h2, h3, f4): Detector.features


class FeatureSource:
    """Pooled backbone features (h1, h2, h3, f4) of a fixed list of images, by index."""

    def __len__(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def get(self, index: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - interface

    def close(self) -> None:
        """Release memory or delete the disk cache."""


class LiveFeatures(FeatureSource):
    """No cache: read the images and run the backbone for every batch."""

    def __init__(self, features: FeaturesFn, dataset: ImageDataset):
        self.features, self.dataset = features, dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        batch = collate([self.dataset[int(i)] for i in index])
        return self.features(batch.image.to(device))


class CachedFeatures(FeatureSource):
    """Features held in memory (torch tensors) or on disk (numpy memmaps)."""

    def __init__(self, levels: list[np.ndarray | torch.Tensor], folder: Path | None = None):
        self.levels, self.folder = levels, folder

    def __len__(self) -> int:
        return int(self.levels[0].shape[0])

    def get(self, index: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        idx = index.cpu().numpy()
        out = []
        for lv in self.levels:
            if isinstance(lv, torch.Tensor):
                out.append(lv[index.cpu()].to(device))
            else:
                order = np.argsort(idx)  # sorted reads are faster on memmaps
                part = np.asarray(lv[idx[order]])
                restored = np.empty_like(part)
                restored[order] = part
                out.append(torch.from_numpy(restored).to(device))
        return out

    def close(self) -> None:
        self.levels = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def feature_shapes(features: FeaturesFn, size: int, device: torch.device) -> list[tuple[int, ...]]:
    """Shapes (C, H, W) of the pooled features at an input size, from one dry run."""
    with torch.no_grad():
        feats = features(torch.zeros(1, 3, size, size, device=device))
    return [tuple(f.shape[1:]) for f in feats]


def extract_features(
    features: FeaturesFn,
    dataset: ImageDataset,
    size: int,
    device: torch.device,
    mode: str = "auto",
    memory_gb: float = 4.0,
    folder: Path | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
    desc: str = "features",
    quiet: bool = False,
) -> FeatureSource:
    """Run `features` (the detector's backbone and pooling) once over `dataset` and keep the
    pooled features (memory or disk).

    mode: "memory", "disk" (numpy memmaps under `folder`), "off" (no cache), or "auto"
    (memory when the features fit in `memory_gb`, else disk).
    """
    if mode == "off":
        return LiveFeatures(features, dataset)
    n = len(dataset)
    shapes = feature_shapes(features, size, device)
    nbytes = n * sum(int(np.prod(s)) for s in shapes) * 4
    if mode == "auto":
        mode = "memory" if nbytes <= memory_gb * 2**30 or folder is None else "disk"
    levels: list[np.ndarray | torch.Tensor]
    if mode == "disk":
        if folder is None:
            raise ValueError("a disk feature cache needs a folder")
        folder.mkdir(parents=True, exist_ok=True)
        levels = [
            np.lib.format.open_memmap(folder / f"level{i}.npy", mode="w+", dtype=np.float32, shape=(n, *s))
            for i, s in enumerate(shapes)
        ]
    else:
        levels = [torch.empty((n, *s), dtype=torch.float32) for s in shapes]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    start = 0
    with torch.no_grad(), progress(total=n, desc=desc, unit="img", quiet=quiet) as bar:
        for batch in loader:
            feats = features(batch.image.to(device))
            stop = start + batch.image.shape[0]
            for lv, f in zip(levels, feats):
                lv[start:stop] = f.cpu() if isinstance(lv, torch.Tensor) else f.cpu().numpy()
            start = stop
            bar.update(batch.image.shape[0])
    for lv in levels:
        if isinstance(lv, np.memmap):
            lv.flush()
    return CachedFeatures(levels, folder if mode == "disk" else None)
