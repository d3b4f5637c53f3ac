"""The features-only interface every backbone offers: a frozen module giving f1..f4.

Whatever the architecture, the rest of vqflow sees one contract: `forward(x)` returns four
maps at strides 4, 8, 16, 32, computed without autograd, by a module that stays in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)


class FeatureExtractor(nn.Module):
    """Base of all backbones: frozen, always in eval mode, returns [f1, f2, f3, f4].

    Subclasses implement `extract(x)` and set `channels` and `name`; `forward` runs it under
    `torch.no_grad()` (not inference_mode, so the maps can enter later autograd graphs as
    constants). Inputs are ImageNet-normalised (B, 3, H, W) tensors.
    """

    strides: tuple[int, int, int, int] = STAGE_STRIDES

    def __init__(self, name: str, channels: tuple[int, int, int, int] | None = None) -> None:
        super().__init__()
        self.name = name
        self.channels: tuple[int, int, int, int] = tuple(channels) if channels else (0, 0, 0, 0)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Compute the four stage maps; called by `forward` under no_grad."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            return list(self.extract(x))

    def freeze(self) -> FeatureExtractor:
        """Turn off gradients for every parameter and switch to eval mode; returns self."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        """Ignore `mode`: a frozen backbone keeps BatchNorm statistics and dropout in eval."""
        return super().train(False)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, strides={self.strides}"
