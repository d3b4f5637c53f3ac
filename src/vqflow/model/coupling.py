"""Parallel-flow blocks of VQ-Flow: the FrEIA-style all-in-one affine coupling and a stack of them.

Every invertible module follows one contract: ``forward(x, cond) -> (y, logdet)`` with
``logdet`` of shape (B,) = log|det dy/dx| per sample, and ``inverse(y, cond) -> x``.
Spec: METHOD.md section 4.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqflow.errors import VQFlowError
from vqflow.model.condition import BroadcastCondition, QuantizedCondition

# A flow's condition: dense, or kept in parts whose convolution is cheaper (vqflow.model.condition).
Condition = torch.Tensor | BroadcastCondition | QuantizedCondition
SPLIT_CONDITIONS = (BroadcastCondition, QuantizedCondition)

# 0.1 * softplus_{beta=0.5}(gamma) == 1  <=>  gamma = 2 * log(exp(5) - 1).
_GLOBAL_SCALE_INIT = 2.0 * math.log(math.expm1(5.0))


def _check_positive(name: str, value: int | None, allow_none: bool = False) -> None:
    """Raise VQFlowError unless `value` is a positive int (or None where allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VQFlowError(f"flow setting '{name}' must be a positive integer, got {value!r}")


def check_cond(cond: Condition | None, cond_channels: int, size: tuple[int, int], owner: str) -> None:
    """Raise VQFlowError unless `cond` is a (B, cond_channels, *size) tensor, or a split condition of
    that shape (or None when 0 channels)."""
    if cond_channels == 0:
        if cond is not None and cond.shape[1] != 0:
            raise VQFlowError(f"{owner} was built with cond_channels=0 but got a condition; pass cond=None")
        return
    if cond is None or len(cond.shape) != 4 or cond.shape[1] != cond_channels or tuple(cond.shape[-2:]) != size:
        got = None if cond is None else tuple(cond.shape)
        raise VQFlowError(
            f"{owner} expects a condition of shape (B, {cond_channels}, {size[0]}, {size[1]}), got {got}; "
            "check the model's cond width and feature sizes"
        )


def conv3x3_macs(in_ch: int, out_ch: int, height: int, width: int) -> int:
    """Multiply-accumulates of a stride-1, same-padded 3x3 convolution (bias not counted)."""
    return 9 * in_ch * out_ch * height * width


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dim of a (B, C, H, W) tensor, with a per-channel affine.

    Normalises each pixel's channel vector on its own, so samples and positions stay independent.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        _check_positive("channels", channels)
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class CouplingSubnet(nn.Module):
    """Conv3x3(in->hidden) ChannelLayerNorm ReLU Conv3x3(hidden->out): the coupling's parameter net.

    ``hidden_ch=None`` uses ``in_ch`` (the reference width); a narrower width makes CPU-size models.
    The last conv starts at ZERO, so a coupling built on it starts as the identity.
    """

    def __init__(self, in_ch: int, out_ch: int, hidden_ch: int | None = None) -> None:
        super().__init__()
        _check_positive("in_ch", in_ch)
        _check_positive("out_ch", out_ch)
        _check_positive("hidden_ch", hidden_ch, allow_none=True)
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.hidden_ch = in_ch if hidden_ch is None else hidden_ch
        self.conv_in = nn.Conv2d(in_ch, self.hidden_ch, 3, padding=1)
        self.norm = ChannelLayerNorm(self.hidden_ch)
        self.conv_out = nn.Conv2d(self.hidden_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.relu(self.norm(self.conv_in(x))))

    def forward_split(self, x: torch.Tensor, cond: BroadcastCondition | QuantizedCondition) -> torch.Tensor:
        """forward(cat(x, cond.dense())), the condition's share of the first conv done by its parts."""
        c = int(x.shape[1])  # a constant when traced for export: the weight slices fold
        h = F.conv2d(x, self.conv_in.weight[:, :c], self.conv_in.bias, padding=1)
        h = h + cond.conv3x3(self.conv_in.weight[:, c:])
        return self.conv_out(F.relu(self.norm(h)))

    def macs(self, height: int, width: int) -> int:
        """Conv multiply-accumulates for one sample at the given spatial size."""
        return conv3x3_macs(self.in_ch, self.hidden_ch, height, width) + conv3x3_macs(
            self.hidden_ch, self.out_ch, height, width
        )


class InvertibleModule(nn.Module):
    """The one contract of every flow block (as FrEIA's): ``forward(x, cond) -> (y, logdet)`` with
    ``logdet`` (B,) = log|det dy/dx| per sample, and ``inverse(y, cond) -> x`` exactly. The
    multi-scale fusion coupling takes and returns lists of tensors, one per scale."""

    def forward(self, x, cond: torch.Tensor | None = None):  # noqa: ANN001 - a tensor, or a list for fusion
        raise NotImplementedError

    def inverse(self, y, cond: torch.Tensor | None = None):  # noqa: ANN001
        raise NotImplementedError


class AllInOneCoupling(InvertibleModule):
    """FrEIA all-in-one block: conditional affine coupling, global affine, fixed channel permutation.

    x1 = first ceil(C/2) channels drive the update of x2 through ``a = 0.1 * subnet(cat(x1, cond))``,
    ``s = clamp * tanh(a[:, :C2])``, ``x2' = x2 * exp(s) + a[:, C2:]``; then ``y = P(x' * scale + offset)``
    with ``scale = 0.1 * softplus_{beta=0.5}(gamma)`` (starts at 1). The subnet's last conv starts at
    zero, so a fresh block is exactly a channel permutation.
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        hidden_channels: int | None = None,
        clamp: float = 1.9,
        permute_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_positive("channels", channels)
        if channels < 2:
            raise VQFlowError(f"flow setting 'channels' must be >= 2 for a coupling, got {channels}")
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise VQFlowError(f"flow setting 'cond_channels' must be an integer >= 0, got {cond_channels!r}")
        if not clamp > 0:
            raise VQFlowError(f"flow setting 'clamp' must be > 0, got {clamp!r}")
        self.channels = channels
        self.cond_channels = cond_channels
        self.clamp = float(clamp)
        self.split1 = channels - channels // 2  # ceil(C/2): the conditioning half
        self.split2 = channels // 2  # the transformed half
        self.subnet = CouplingSubnet(self.split1 + cond_channels, 2 * self.split2, hidden_channels)
        self.global_gamma = nn.Parameter(torch.full((1, channels, 1, 1), _GLOBAL_SCALE_INIT))
        self.global_offset = nn.Parameter(torch.zeros(1, channels, 1, 1))
        generator = torch.Generator().manual_seed(int(permute_seed))
        perm = torch.randperm(channels, generator=generator)
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def log_global_scale(self) -> torch.Tensor:
        """Per-channel log of the global affine scale, shape (1, C, 1, 1)."""
        return torch.log(0.1 * F.softplus(self.global_gamma, beta=0.5))

    def _coupling_params(self, x1: torch.Tensor, cond: Condition | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-scale s and shift t for x2, computed from the untouched half and the condition."""
        if isinstance(cond, SPLIT_CONDITIONS):
            a = 0.1 * self.subnet.forward_split(x1, cond)
        else:
            inputs = x1 if cond is None or self.cond_channels == 0 else torch.cat([x1, cond], dim=1)
            a = 0.1 * self.subnet(inputs)
        s = self.clamp * torch.tanh(a[:, : self.split2])
        return s, a[:, self.split2 :]

    def _check(self, x: torch.Tensor, cond: Condition | None) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise VQFlowError(
                f"AllInOneCoupling expects input of shape (B, {self.channels}, H, W), got {tuple(x.shape)}"
            )
        check_cond(cond, self.cond_channels, tuple(x.shape[-2:]), "AllInOneCoupling")

    def forward(self, x: torch.Tensor, cond: Condition | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(x, cond)
        x1, x2 = x[:, : self.split1], x[:, self.split1 :]
        s, t = self._coupling_params(x1, cond)
        x2 = x2 * torch.exp(s) + t
        log_scale = self.log_global_scale()
        y = torch.cat([x1, x2], dim=1) * torch.exp(log_scale) + self.global_offset
        y = y[:, self.perm]
        pixels = x.shape[2] * x.shape[3]
        logdet = s.flatten(1).sum(1) + pixels * log_scale.sum()
        return y, logdet

    def inverse(self, y: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        self._check(y, cond)
        x = (y[:, self.inv_perm] - self.global_offset) * torch.exp(-self.log_global_scale())
        x1, x2 = x[:, : self.split1], x[:, self.split1 :]
        s, t = self._coupling_params(x1, cond)
        return torch.cat([x1, (x2 - t) * torch.exp(-s)], dim=1)

    def macs(self, height: int, width: int) -> int:
        """Conv multiply-accumulates for one sample of size (height, width)."""
        return self.subnet.macs(height, width)


class ConditionalFlow(InvertibleModule):
    """A stack of AllInOneCoupling blocks (distinct permutation seeds) sharing one condition.

    This is one parallel flow F_s of VQ-Flow: it maps h_s to z_s given c_s (same H, W as h_s).
    """

    def __init__(
        self,
        channels: int,
        cond_channels: int,
        n_blocks: int,
        hidden_channels: int | None = None,
        clamp: float = 1.9,
        permute_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_positive("n_blocks", n_blocks)
        self.channels = channels
        self.cond_channels = cond_channels
        self.blocks = nn.ModuleList(
            AllInOneCoupling(channels, cond_channels, hidden_channels, clamp, permute_seed=permute_seed + i)
            for i in range(n_blocks)
        )

    def forward(self, x: torch.Tensor, cond: Condition | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for block in self.blocks:
            x, block_logdet = block(x, cond)
            logdet = logdet + block_logdet
        return x, logdet

    def inverse(self, y: torch.Tensor, cond: Condition | None = None) -> torch.Tensor:
        for block in reversed(self.blocks):
            y = block.inverse(y, cond)
        return y

    def macs(self, height: int, width: int) -> int:
        """Conv multiply-accumulates for one sample of size (height, width)."""
        return sum(block.macs(height, width) for block in self.blocks)
