"""`create_backbone`: the one entry point turning a name, a module or a file into f1..f4.

Names resolve in this order: a registered name ('efficientnet_lite0', 'efficientnet_lite2'),
'timm:<name>', any other name timm knows; an nn.Module is wrapped as it is. This module sits
above the registry and every builder, so nothing here is imported back (no import cycle).
"""

from __future__ import annotations

from torch import nn

from vqflow.backbones import efficientnet_lite as _builtin  # noqa: F401  (registers the Lite names)
from vqflow.backbones.base import FeatureExtractor
from vqflow.backbones.module_backbone import wrap_module
from vqflow.backbones.registry import DEFAULT_BACKBONE, get_registered
from vqflow.backbones.timm_backbone import create_timm_backbone
from vqflow.backbones.weights import load_strict, read_state_dict
from vqflow.errors import VQFlowError


def create_backbone(
    name_or_module: str | nn.Module, weights: str | None = None, pretrained: bool = True
) -> FeatureExtractor:
    """Build a frozen FeatureExtractor giving f1..f4 at strides 4, 8, 16, 32.

    `weights`: a local state-dict file loaded strictly into the architecture (works offline
    for every backbone; `pretrained` is then ignored). `pretrained=False` leaves the random
    initialisation (seed torch first for reproducibility). A FeatureExtractor is returned
    as is; another nn.Module is wrapped (see `wrap_module` for a custom features function).
    """
    if isinstance(name_or_module, FeatureExtractor):
        if weights is not None:
            load_strict(name_or_module, read_state_dict(weights), weights, name_or_module.name)
        return name_or_module.freeze()
    if isinstance(name_or_module, nn.Module):
        return wrap_module(name_or_module, weights=weights)
    if not isinstance(name_or_module, str) or not name_or_module.strip():
        raise VQFlowError(
            f"backbone must be a name such as '{DEFAULT_BACKBONE}' or an nn.Module, got {name_or_module!r}"
        )
    name = name_or_module.strip()
    registered = get_registered(name)
    if registered is not None:
        return registered(weights=weights, pretrained=pretrained)
    explicit = name.startswith("timm:")
    timm_name = name[len("timm:") :] if explicit else name
    return create_timm_backbone(timm_name, weights=weights, pretrained=pretrained, explicit=explicit)
