"""MSFlow-style multi-scale fusion coupling: the flow G that mixes the scales' latents (METHOD.md 4, 2.11).

Same contract as every flow block, with lists: ``forward(xs, cond) -> (ys, logdet)`` and
``inverse(ys, cond) -> xs``; ``cond`` is given at the smallest scale's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqflow.errors import VQFlowError
from vqflow.model.coupling import ChannelLayerNorm, InvertibleModule, check_cond, conv3x3_macs
from vqflow.model.layers import resize_bilinear

# MSFlow's soft clamp constant, about 2/pi: log-scale = clamp * 0.636 * atan(s / clamp).
_ATAN_FACTOR = 0.636


def pool_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average-pool x to `size`: adaptive pooling, written as a plain average pool where the
    sizes divide (the same windows; exporters need no input shape for it)."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == size:
        return x
    if h % size[0] == 0 and w % size[1] == 0:
        k = (h // size[0], w // size[1])
        return F.avg_pool2d(x, k, k)
    return F.adaptive_avg_pool2d(x, size)


class FusionHalfStep(nn.Module):
    """One affine half-step over all scales: conditioning halves (widths `in_widths`) update the others.

    Each scale's conditioning half is pooled to the smallest size, all are concatenated with the
    condition and passed through Conv3x3 LN ReLU Conv3x3 ReLU; the result is split per scale,
    upsampled back, added to the scale's conditioning half, and per-scale Conv3x3 heads give the
    log-scale and shift (heads start at ZERO, so the half-step starts as the identity).
    """

    def __init__(
        self, in_widths: list[int], out_widths: list[int], cond_channels: int, hidden_channels: int | None, clamp: float
    ) -> None:
        super().__init__()
        self.in_widths = list(in_widths)
        self.out_widths = list(out_widths)
        self.cond_channels = cond_channels
        self.clamp = clamp
        trunk_in = sum(in_widths) + cond_channels
        self.hidden_channels = trunk_in if hidden_channels is None else hidden_channels
        self.conv_in = nn.Conv2d(trunk_in, self.hidden_channels, 3, padding=1)
        self.norm = ChannelLayerNorm(self.hidden_channels)
        self.conv_out = nn.Conv2d(self.hidden_channels, sum(in_widths), 3, padding=1)
        self.heads = nn.ModuleList(
            nn.Conv2d(w_in, 2 * w_out, 3, padding=1) for w_in, w_out in zip(in_widths, out_widths)
        )
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def scale_shift(
        self, halves: list[torch.Tensor], cond: torch.Tensor | None, small: tuple[int, int]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per scale, the soft-clamped log-scale and the shift for the transformed half."""
        pooled = [pool_to(h, small) for h in halves]
        if cond is not None and self.cond_channels > 0:
            pooled.append(cond)
        mixed = F.relu(self.conv_out(F.relu(self.norm(self.conv_in(torch.cat(pooled, dim=1))))))
        params = []
        for half, part, head, w_out in zip(halves, mixed.split(self.in_widths, dim=1), self.heads, self.out_widths):
            size = (int(half.shape[-2]), int(half.shape[-1]))
            if size != small:
                part = resize_bilinear(part, size)
            st = head(part + half)
            log_scale = self.clamp * _ATAN_FACTOR * torch.atan(st[:, :w_out] / self.clamp)
            params.append((log_scale, st[:, w_out:]))
        return params

    def macs(self, sizes: list[tuple[int, int]]) -> int:
        """Conv multiply-accumulates for one sample at the given per-scale sizes."""
        small = (min(h for h, _ in sizes), min(w for _, w in sizes))
        trunk_in = sum(self.in_widths) + self.cond_channels
        total = conv3x3_macs(trunk_in, self.hidden_channels, *small)
        total += conv3x3_macs(self.hidden_channels, sum(self.in_widths), *small)
        for (h, w), w_in, w_out in zip(sizes, self.in_widths, self.out_widths):
            total += conv3x3_macs(w_in, 2 * w_out, h, w)
        return total


class FusionCoupling(InvertibleModule):
    """Multi-scale fusion coupling (MSFlow): two affine half-steps across all scales; logdet sums scales.

    Scale s is split into a_s (first ceil(C_s/2) channels) and b_s. Step 1 updates every b_s from all
    a's and the condition; step 2 updates every a_s from all new b's. Starts as the identity.
    ``hidden_channels=None`` uses the trunk's input width (reference); smaller values cut the cost.
    """

    def __init__(
        self, channels: list[int], cond_channels: int, hidden_channels: int | None = None, clamp: float = 1.9
    ) -> None:
        super().__init__()
        channels = list(channels)
        if not channels or any(not isinstance(c, int) or c < 2 for c in channels):
            raise VQFlowError(f"flow setting 'channels' must be a non-empty list of integers >= 2, got {channels!r}")
        if not isinstance(cond_channels, int) or cond_channels < 0:
            raise VQFlowError(f"flow setting 'cond_channels' must be an integer >= 0, got {cond_channels!r}")
        if hidden_channels is not None and (not isinstance(hidden_channels, int) or hidden_channels < 1):
            raise VQFlowError(
                f"flow setting 'hidden_channels' must be a positive integer or None, got {hidden_channels!r}"
            )
        if not clamp > 0:
            raise VQFlowError(f"flow setting 'clamp' must be > 0, got {clamp!r}")
        self.channels = channels
        self.cond_channels = cond_channels
        self.clamp = float(clamp)
        self.split1 = [c - c // 2 for c in channels]
        self.split2 = [c // 2 for c in channels]
        self.step1 = FusionHalfStep(self.split1, self.split2, cond_channels, hidden_channels, self.clamp)
        self.step2 = FusionHalfStep(self.split2, self.split1, cond_channels, hidden_channels, self.clamp)

    def _smallest(self, xs: list[torch.Tensor], cond: torch.Tensor | None) -> tuple[int, int]:
        """Validate shapes; return the smallest (H, W) over the scales."""
        if len(xs) != len(self.channels):
            raise VQFlowError(f"FusionCoupling expects {len(self.channels)} scales, got {len(xs)}")
        for i, (x, c) in enumerate(zip(xs, self.channels)):
            if x.dim() != 4 or x.shape[1] != c:
                raise VQFlowError(f"FusionCoupling scale {i} expects shape (B, {c}, H, W), got {tuple(x.shape)}")
        small = (min(int(x.shape[2]) for x in xs), min(int(x.shape[3]) for x in xs))  # ints: constant in an export
        check_cond(cond, self.cond_channels, small, "FusionCoupling")
        return small

    def forward(
        self, xs: list[torch.Tensor], cond: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        small = self._smallest(xs, cond)
        a = [x[:, :n] for x, n in zip(xs, self.split1)]
        b = [x[:, n:] for x, n in zip(xs, self.split1)]
        logdet = xs[0].new_zeros(xs[0].shape[0])
        new_b = []
        for b_s, (s, t) in zip(b, self.step1.scale_shift(a, cond, small)):
            new_b.append(b_s * torch.exp(s) + t)
            logdet = logdet + s.flatten(1).sum(1)
        new_a = []
        for a_s, (s, t) in zip(a, self.step2.scale_shift(new_b, cond, small)):
            new_a.append(a_s * torch.exp(s) + t)
            logdet = logdet + s.flatten(1).sum(1)
        return [torch.cat([a_s, b_s], dim=1) for a_s, b_s in zip(new_a, new_b)], logdet

    def inverse(self, ys: list[torch.Tensor], cond: torch.Tensor | None = None) -> list[torch.Tensor]:
        small = self._smallest(ys, cond)
        new_a = [y[:, :n] for y, n in zip(ys, self.split1)]
        new_b = [y[:, n:] for y, n in zip(ys, self.split1)]
        a = [(a_s - t) * torch.exp(-s) for a_s, (s, t) in zip(new_a, self.step2.scale_shift(new_b, cond, small))]
        b = [(b_s - t) * torch.exp(-s) for b_s, (s, t) in zip(new_b, self.step1.scale_shift(a, cond, small))]
        return [torch.cat([a_s, b_s], dim=1) for a_s, b_s in zip(a, b)]

    def macs(self, sizes: list[tuple[int, int]]) -> int:
        """Conv multiply-accumulates for one sample at the given per-scale (H, W) sizes."""
        return self.step1.macs(sizes) + self.step2.macs(sizes)
