"""Inference-only rebuild of an efficientnet_lite_pytorch EfficientNet: BN folded, static padding.

The package pads every conv in Python per call (F.pad copies each expanded map before its
depthwise conv) and runs each BatchNorm on its own. Here each conv+BN becomes one conv with a
bias, stride-1 convs use the conv's own symmetric padding, and only the stride-2 convs add
TensorFlow's one extra bottom/right row/column, chosen per call from the input parity, so the
result equals the package's 'same' padding at any input size (square or not).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of one conv equal to `bn(conv(x))` with eval-mode BN statistics."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.view(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    return weight.to(conv.weight.dtype), bias.to(conv.weight.dtype)


def same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one axis, as the package computes it."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A conv with its BN folded in and TensorFlow 'same' padding for any input size.

    Stride 1 with an odd kernel pads symmetrically, so the padding is static. Otherwise the
    symmetric part goes to the conv and the (at most one) extra bottom/right row/column to
    an F.pad, both from the input's height and width (constants when traced at a fixed size).
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
        k, s = conv.kernel_size[0], conv.stride[0]
        if conv.kernel_size != (k, k) or tuple(conv.stride) != (s, s) or k % 2 == 0 or conv.dilation != (1, 1):
            raise ValueError(f"unsupported conv {conv}: needs an odd square kernel, square stride")
        static = s == 1
        super().__init__(
            conv.in_channels,
            conv.out_channels,
            k,
            stride=s,
            padding=(k - 1) // 2 if static else 0,
            groups=conv.groups,
            bias=True,
            device="meta",
        )  # on "meta": no random init to compute (nor to draw from torch's generator)
        self.static = static
        weight, bias = fold_bn(conv, bn)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        k, s = self.kernel_size[0], self.stride[0]
        # int(): constants when traced for export (fixed input size), so the pad folds into the conv
        height, width = int(x.shape[-2]), int(x.shape[-1])
        top, bottom = same_pad(height, k, s)
        left, right = same_pad(width, k, s)
        if bottom != top or right != left:
            x = F.pad(x, [0, right - left, 0, bottom - top])
        return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), 1, self.groups)


def _activation(module: nn.Module) -> nn.Module:
    """The block's activation, in place (it only ever sees fresh conv outputs): ReLU6 for
    Lite, SiLU for the swish of other EfficientNets."""
    return nn.ReLU6(inplace=True) if isinstance(module, nn.ReLU6) else nn.SiLU(inplace=True)


class FusedMBConv(nn.Module):
    """One MBConvBlock in eval mode: [expand 1x1 + act] -> depthwise + act -> project 1x1 [+ x]."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if block.has_se:
            raise ValueError("squeeze-excitation blocks are not part of EfficientNet-Lite")
        args = block._block_args
        self.expand = SameConv2d(block._expand_conv, block._bn0) if args.expand_ratio != 1 else None
        self.depthwise = SameConv2d(block._depthwise_conv, block._bn1)
        self.project = SameConv2d(block._project_conv, block._bn2)
        self.act = _activation(block._swish)
        # The package's own test, kept verbatim: its first block of a stage has stride [s] (a
        # list), which never equals 1, so only the repeated blocks add the skip connection.
        self.residual = bool(block.id_skip and args.stride == 1 and args.input_filters == args.output_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand(x)) if self.expand is not None else x
        y = self.project(self.act(self.depthwise(y)))
        return y.add_(x) if self.residual else y


class FusedEfficientNet(nn.Module):
    """Stem, blocks and head of the package network, folded for eval-only inference."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.stem = SameConv2d(net._conv_stem, net._bn0)
        self.act = _activation(net._swish)
        self.blocks = nn.ModuleList(FusedMBConv(b) for b in net._blocks)
        self.head = SameConv2d(net._conv_head, net._bn1)
        self.fc = nn.Linear(net._fc.in_features, net._fc.out_features, device="meta")
        self.fc.weight = nn.Parameter(net._fc.weight.detach().clone(), requires_grad=False)
        self.fc.bias = nn.Parameter(net._fc.bias.detach().clone(), requires_grad=False)

    def stages(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks at indices `taps` (sorted); later blocks do not run."""
        x = self.act(self.stem(x))
        maps = []
        for idx, block in enumerate(self.blocks[: taps[-1] + 1]):
            x = block(x)
            if idx in taps:
                maps.append(x)
        return maps

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of the full network (dropout is the identity in eval)."""
        x = self.act(self.stem(x))
        for block in self.blocks:
            x = block(x)
        x = self.act(self.head(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
