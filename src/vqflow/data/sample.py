"""The one sample type every dataset format produces, and the light record it is read from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class Record:
    """Where one image comes from, before it is read.

    `path` is a file path, or a pseudo path such as ``cifar10:/data/test_batch#17`` for
    images held in memory (then `array` holds the HxW or HxWx3 uint8 pixels).
    `mask_path` is None where the image is normal or the dataset has no masks.
    """

    path: str
    label: int  # 0 normal, 1 anomalous
    cls: str  # class name (evaluation stays per class; training never sees it)
    mask_path: str | None = None
    array: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass
class Sample:
    """One read, resized and normalised image."""

    image: torch.Tensor  # (3, H, W) float32, ImageNet-normalised
    mask: torch.Tensor | None  # (1, H, W) float32 in {0, 1}; None where unknown
    label: int
    cls: str
    path: str


@dataclass
class Batch:
    """A collated list of samples; `mask` is None when no sample in the batch has one."""

    image: torch.Tensor  # (B, 3, H, W)
    mask: torch.Tensor | None  # (B, 1, H, W); zeros for samples without a mask
    label: torch.Tensor  # (B,) long
    cls: list[str]
    path: list[str]


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a Batch (usable as a DataLoader collate_fn)."""
    images = torch.stack([s.image for s in samples])
    if any(s.mask is not None for s in samples):
        h, w = images.shape[-2:]
        mask = torch.stack([s.mask if s.mask is not None else torch.zeros(1, h, w) for s in samples])
    else:
        mask = None
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return Batch(images, mask, labels, [s.cls for s in samples], [s.path for s in samples])
