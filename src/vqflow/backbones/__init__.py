"""Frozen feature extractors behind one registry: `create_backbone(name)` gives f1..f4.

Built in and offline: efficientnet_lite0 (default), efficientnet_lite2. Any timm model with
the `vqflow[timm]` extra, a local weights file, or a user nn.Module work too.
"""

from vqflow.backbones.base import STAGE_STRIDES, FeatureExtractor
from vqflow.backbones.efficientnet_lite import EfficientNetLiteFeatures, packaged_weights_path
from vqflow.backbones.factory import create_backbone
from vqflow.backbones.module_backbone import ModuleFeatures, wrap_module
from vqflow.backbones.registry import DEFAULT_BACKBONE, list_backbones, register_backbone
from vqflow.backbones.timm_backbone import TimmFeatures

__all__ = [
    "DEFAULT_BACKBONE",
    "STAGE_STRIDES",
    "EfficientNetLiteFeatures",
    "FeatureExtractor",
    "ModuleFeatures",
    "TimmFeatures",
    "create_backbone",
    "list_backbones",
    "packaged_weights_path",
    "register_backbone",
    "wrap_module",
]
