"""timm models (the paper's ConvNeXtV2-base, WideResNet-50, ...) as frozen stage extractors.

timm is an optional extra (`pip install 'vqflow[timm]'`). Its features_only models report a
stride per output; the deepest output at each stride 4, 8, 16, 32 becomes f1..f4.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from vqflow.backbones.base import FeatureExtractor
from vqflow.backbones.registry import DEFAULT_BACKBONE, list_backbones, suggest_builtin
from vqflow.backbones.stages import pick_stage_indices
from vqflow.backbones.weights import _one_line, read_state_dict
from vqflow.errors import VQFlowError


def import_timm(name: str):
    """The timm module, or VQFlowError telling how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise VQFlowError(
            f"backbone '{name}' needs timm: pip install 'vqflow[timm]' "
            f"(built-in offline backbones: {', '.join(list_backbones())}){suggest_builtin(name)}"
        ) from None


class TimmFeatures(FeatureExtractor):
    """A timm features_only model reduced to the four maps at strides 4, 8, 16, 32."""

    def __init__(self, name: str, model: nn.Module) -> None:
        info = model.feature_info
        strides = [int(s) for s in info.reduction()]
        picked = pick_stage_indices(strides)
        if picked is None:
            raise VQFlowError(
                f"backbone '{name}' has feature strides {strides}; vqflow needs maps at strides "
                f"4, 8, 16, 32: choose another model or '{DEFAULT_BACKBONE}'"
            )
        all_channels = [int(c) for c in info.channels()]
        super().__init__(name, tuple(all_channels[i] for i in picked))
        self.model = model
        self.picked = picked
        self.freeze()

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.model(x)
        if isinstance(out, dict):
            out = list(out.values())
        return [out[i] for i in self.picked]


def create_timm_backbone(
    name: str, weights: str | None = None, pretrained: bool = True, explicit: bool = False
) -> TimmFeatures:
    """Create timm model `name` as features_only; `weights` is a local file for offline use.

    Raises VQFlowError when timm is missing, the name is unknown, or weights cannot be had.
    """
    shown = f"timm:{name}" if explicit else name
    timm = import_timm(shown)
    is_model = getattr(timm, "is_model", None)
    if is_model is not None and not is_model(name):
        raise VQFlowError(
            f"unknown backbone '{shown}': use one of {', '.join(list_backbones())} or a timm "
            f"model name (timm.list_models()){suggest_builtin(name)}"
        )
    kwargs: dict = {"features_only": True, "pretrained": pretrained or weights is not None}
    if weights is not None:
        read_state_dict(weights)  # a missing or corrupt file gets the one-line error first
        kwargs["pretrained_cfg_overlay"] = {"file": weights}
    try:
        model = timm.create_model(name, **kwargs)
    except VQFlowError:
        raise
    except Exception as exc:  # noqa: BLE001 - timm and hub downloads raise many types; named in one line
        if weights is not None:
            raise VQFlowError(
                f"backbone weights file '{weights}' does not fit backbone '{shown}' "
                f"({_one_line(exc)}); pass the state dict of that same architecture"
            ) from None
        if pretrained:
            raise VQFlowError(
                f"backbone '{shown}': could not get its pretrained weights ({_one_line(exc)}); "
                f"pass a local state dict with --backbone-weights FILE, or use "
                f"'{DEFAULT_BACKBONE}' (works offline)"
            ) from None
        raise VQFlowError(f"backbone '{shown}' could not be built by timm: {_one_line(exc)}") from None
    return TimmFeatures(shown, model)
