"""The invertible flow blocks of VQ-Flow in one import: parallel-flow couplings and the fusion coupling.

Contract of every block: ``forward(x, cond) -> (y, logdet)``, logdet (B,) = log|det dy/dx| per
sample; ``inverse(y, cond) -> x`` exactly. The fusion coupling takes and returns lists (one per scale).
Cost: each block has ``macs(...)`` (conv multiply-accumulates per sample) and all widths are arguments.
"""

from __future__ import annotations

from torch import nn

from vqflow.model.coupling import (
    AllInOneCoupling,
    ChannelLayerNorm,
    ConditionalFlow,
    CouplingSubnet,
    InvertibleModule,
)
from vqflow.model.fusion import FusionCoupling, FusionHalfStep


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of `module` (for cost notes and presets)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = [
    "AllInOneCoupling",
    "ChannelLayerNorm",
    "ConditionalFlow",
    "CouplingSubnet",
    "FusionCoupling",
    "FusionHalfStep",
    "InvertibleModule",
    "count_parameters",
]
