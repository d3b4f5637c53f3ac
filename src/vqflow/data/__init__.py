"""Dataset formats -> one sample type (image, mask, label, class, path)."""

from vqflow.data.dataset import IMAGENET_MEAN, IMAGENET_STD, ImageDataset, denormalize
from vqflow.data.demo import demo_root
from vqflow.data.images import read_image, read_mask
from vqflow.data.sample import Batch, Record, Sample, collate
from vqflow.data.specs import load_data, parse_spec
from vqflow.data.splits import Splits

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Batch",
    "ImageDataset",
    "Record",
    "Sample",
    "Splits",
    "collate",
    "demo_root",
    "denormalize",
    "load_data",
    "parse_spec",
    "read_image",
    "read_mask",
]
