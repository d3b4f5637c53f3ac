"""One registry of named backbones and one `create_backbone` entry point (timm-style).

Names resolve in this order: a registered name ('efficientnet_lite0', 'efficientnet_lite2'),
'timm:<name>', any other name timm knows; an nn.Module is wrapped as it is.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from vqflow.backbones.base import FeatureExtractor
from vqflow.errors import VQFlowError

BackboneFactory = Callable[..., FeatureExtractor]
_REGISTRY: dict[str, BackboneFactory] = {}

DEFAULT_BACKBONE = "efficientnet_lite0"


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering `factory(weights=None, pretrained=True) -> FeatureExtractor`."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Sorted names of the registered (built-in, offline) backbones; timm names come on top."""
    return sorted(_REGISTRY)


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
            from vqflow.backbones.weights import load_strict, read_state_dict

            load_strict(name_or_module, read_state_dict(weights), weights, name_or_module.name)
        return name_or_module.freeze()
    if isinstance(name_or_module, nn.Module):
        from vqflow.backbones.module_backbone import wrap_module

        return wrap_module(name_or_module, weights=weights)
    if not isinstance(name_or_module, str) or not name_or_module.strip():
        raise VQFlowError(
            f"backbone must be a name such as '{DEFAULT_BACKBONE}' or an nn.Module, "
            f"got {name_or_module!r}"
        )
    name = name_or_module.strip()
    if name in _REGISTRY:
        return _REGISTRY[name](weights=weights, pretrained=pretrained)
    from vqflow.backbones.timm_backbone import create_timm_backbone

    explicit = name.startswith("timm:")
    timm_name = name[len("timm:"):] if explicit else name
    return create_timm_backbone(timm_name, weights=weights, pretrained=pretrained, explicit=explicit)


def suggest_builtin(name: str) -> str:
    """' (did you mean X?)' for the registered name nearest to `name`, or ''."""
    close = difflib.get_close_matches(name, list_backbones(), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
