"""Small non-invertible pieces of VQ-Flow: positional encoding and the feature MLPs."""

from __future__ import annotations

import math

import torch
from torch import nn


def positional_encoding_2d(channels: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin/cos encoding (channels, H, W): first half encodes x, second half y."""
    if channels % 4:
        raise ValueError(f"positional channels must be a multiple of 4, got {channels}")
    quarter = channels // 4
    freq = torch.exp(torch.arange(quarter, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    xs = torch.arange(width, dtype=torch.float32)[None, :] * freq[:, None]  # (q, W)
    ys = torch.arange(height, dtype=torch.float32)[None, :] * freq[:, None]  # (q, H)
    pe = torch.zeros(channels, height, width)
    pe[0:quarter] = torch.sin(xs)[:, None, :].expand(-1, height, -1)
    pe[quarter : 2 * quarter] = torch.cos(xs)[:, None, :].expand(-1, height, -1)
    pe[2 * quarter : 3 * quarter] = torch.sin(ys)[:, :, None].expand(-1, -1, width)
    pe[3 * quarter :] = torch.cos(ys)[:, :, None].expand(-1, -1, width)
    return pe


class GlobalMLP(nn.Sequential):
    """y = MLP(GAP(f4)): Linear BN ReLU Linear BN ReLU (METHOD.md 2.3)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__(
            nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
        )  # fmt: skip


class FeatureMLP(nn.Sequential):
    """Per-position MLP: Conv1x1 BN ReLU Conv1x1 BN ReLU (METHOD.md 2.5)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )  # fmt: skip


def pool_features(features: list[torch.Tensor]) -> list[torch.Tensor]:
    """Flow inputs h1..h3 = AvgPool(3, 2, 1) of f1..f3; f4 passes unchanged (METHOD.md 2.2).

    Deterministic and parameter-free, so the feature cache stores its output.
    """
    if len(features) != 4:
        raise ValueError(f"expected 4 backbone stages, got {len(features)}")
    pooled = [nn.functional.avg_pool2d(f, 3, 2, 1) for f in features[:3]]
    return pooled + [features[3]]


_RESIZE_MATRICES: dict[tuple, torch.Tensor] = {}


def bilinear_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation with half-pixel centres (as
    F.interpolate(mode="bilinear", align_corners=False)): source x = (i + 0.5) n_in / n_out - 0.5,
    clamped at the ends."""
    key = (n_in, n_out, dtype, str(device))
    if key not in _RESIZE_MATRICES:
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = src - lo
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        rows = torch.arange(n_out)
        m.index_put_((rows, lo), 1 - frac, accumulate=True)
        m.index_put_((rows, hi), frac, accumulate=True)
        _RESIZE_MATRICES[key] = m.to(dtype=dtype, device=device)
    return _RESIZE_MATRICES[key]


def resize_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to `size` as two matrix products, R_h @ x @ R_w^T: the same
    values as F.interpolate(align_corners=False), but with a deterministic backward on CUDA
    (the upsampling kernel's gradient accumulates with atomics) and plain MatMuls when exported."""
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    rh = bilinear_matrix(int(x.shape[-2]), h, x.dtype, x.device)
    rw = bilinear_matrix(int(x.shape[-1]), w, x.dtype, x.device)
    return torch.matmul(torch.matmul(rh, x), rw.t())
