"""The leaf registry of named backbones (timm's `_registry` pattern): names -> factories.

It imports nothing else of vqflow.backbones but `base`, so builders can register themselves
here while `factory.create_backbone` imports the builders without an import cycle.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from vqflow.backbones.base import FeatureExtractor

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


def get_registered(name: str) -> BackboneFactory | None:
    """The factory registered under `name`, or None."""
    return _REGISTRY.get(name)


def list_backbones() -> list[str]:
    """Sorted names of the registered (built-in, offline) backbones; timm names come on top."""
    return sorted(_REGISTRY)


def suggest_builtin(name: str) -> str:
    """' (did you mean X?)' for the registered name nearest to `name`, or ''."""
    close = difflib.get_close_matches(name, list_backbones(), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
