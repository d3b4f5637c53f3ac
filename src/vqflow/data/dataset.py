"""Torch dataset over Records: resize (Lanczos, no crop), ImageNet-normalise, align masks."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqflow.data.images import read_image, read_mask
from vqflow.data.sample import Record, Sample
from vqflow.errors import VQFlowError
from vqflow.imageio import IMAGENET_MEAN, IMAGENET_STD, model_input

_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)


class ImageDataset(Dataset):
    """Read records as `Sample`s of size x size pixels.

    With `has_masks=True`, normal records without a mask get an all-zero mask (their
    ground truth is known to be empty); otherwise such records get mask None.
    """

    def __init__(self, records: list[Record], size: int, has_masks: bool = False) -> None:
        if int(size) <= 0:
            raise VQFlowError(f"image size must be a positive number of pixels, got {size}")
        self.records = list(records)
        self.size = int(size)
        self.has_masks = has_masks

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        img = read_image(record)
        image = torch.from_numpy(model_input(img, self.size))
        mask = None
        if record.mask_path is not None:
            mask = self._mask(record, img.size)
        elif self.has_masks and record.label == 0:
            mask = torch.zeros(1, self.size, self.size, dtype=torch.float32)
        return Sample(image=image, mask=mask, label=int(record.label), cls=record.cls, path=record.path)

    def _mask(self, record: Record, image_size: tuple[int, int]) -> torch.Tensor:
        """Read, size-check, nearest-resize and binarise the record's mask."""
        binary = read_mask(record.mask_path)
        mask_size = (binary.shape[1], binary.shape[0])
        if mask_size != image_size:
            raise VQFlowError(
                f"mask {record.mask_path} is {mask_size[0]}x{mask_size[1]} but image {record.path} is "
                f"{image_size[0]}x{image_size[1]}; masks must match their image's size"
            )
        small = Image.fromarray(binary.astype(np.uint8) * 255, "L").resize(
            (self.size, self.size), Image.Resampling.NEAREST
        )
        return torch.from_numpy((np.asarray(small) > 0).astype(np.float32))[None]


def denormalize(tensor: torch.Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> HxWx3 uint8 array, for visualisation."""
    t = tensor.detach().to(torch.float32).cpu()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] != 3:
        raise VQFlowError(f"denormalize expects a (3, H, W) image tensor, got shape {tuple(t.shape)}")
    rgb = (t * _STD + _MEAN).clamp(0.0, 1.0)
    return (rgb.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
