"""Wrap any user nn.Module as a FeatureExtractor, checking its maps by one dry run.

The module (or `features_fn(module, x)`) must return four maps (list, tuple or dict, in
order f1..f4) at strides 4, 8, 16, 32; channels and strides come from a 256 px dry run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vqflow.backbones.base import STAGE_STRIDES, FeatureExtractor
from vqflow.backbones.weights import load_strict, read_state_dict
from vqflow.errors import VQFlowError

PROBE_SIZE = 256
FeaturesFn = Callable[[nn.Module, torch.Tensor], object]


def _as_map_list(out: object, name: str) -> list[torch.Tensor]:
    """Turn a module output (list/tuple/dict of tensors) into a list, else VQFlowError."""
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (list, tuple)) or not all(isinstance(t, torch.Tensor) for t in out):
        raise VQFlowError(
            f"backbone module '{name}' returned {type(out).__name__}; it must return 4 feature "
            "maps (a list, tuple or dict of tensors) or be wrapped with features_fn="
        )
    return list(out)


class ModuleFeatures(FeatureExtractor):
    """A user module giving f1..f4; `features_fn(module, x)` adapts other outputs."""

    def __init__(self, module: nn.Module, features_fn: FeaturesFn | None = None, name: str | None = None) -> None:
        super().__init__(name or f"module:{type(module).__name__}")
        self.module = module
        self.features_fn = features_fn
        self.freeze()
        self.channels = self._probe()

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.features_fn(self.module, x) if self.features_fn else self.module(x)
        return _as_map_list(out, self.name)

    def _probe(self) -> tuple[int, int, int, int]:
        """One dry run at PROBE_SIZE px: infer channels and verify strides 4, 8, 16, 32."""
        param = next(self.module.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        probe = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE, device=device)
        try:
            maps = self(probe)
        except VQFlowError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user module may raise anything; named in one line
            raise VQFlowError(
                f"backbone module '{self.name}' failed on a 1x3x{PROBE_SIZE}x{PROBE_SIZE} input: "
                + " ".join(str(exc).split())[:160]
            ) from None
        if len(maps) != 4 or any(m.dim() != 4 for m in maps):
            shapes = [tuple(m.shape) for m in maps]
            raise VQFlowError(
                f"backbone module '{self.name}' returned maps of shapes {shapes}; it must return "
                "exactly 4 maps (B, C, H, W) at strides 4, 8, 16, 32"
            )
        strides = [(PROBE_SIZE / m.shape[-2], PROBE_SIZE / m.shape[-1]) for m in maps]
        if any(sh != want or sw != want for (sh, sw), want in zip(strides, STAGE_STRIDES)):
            got = [sh if sh == sw else (sh, sw) for sh, sw in strides]
            got = [int(s) if isinstance(s, float) and s.is_integer() else s for s in got]
            raise VQFlowError(
                f"backbone module '{self.name}' returned maps at strides {got} for a "
                f"{PROBE_SIZE} px input; vqflow needs f1..f4 at strides 4, 8, 16, 32 "
                "(pick the right stages with features_fn=)"
            )
        return tuple(int(m.shape[1]) for m in maps)  # type: ignore[return-value]


def wrap_module(
    module: nn.Module,
    features_fn: FeaturesFn | None = None,
    weights: str | None = None,
    name: str | None = None,
) -> ModuleFeatures:
    """Wrap `module` (optionally loading a local state dict into it first) as a backbone."""
    if weights is not None:
        load_strict(module, read_state_dict(weights), weights, name or type(module).__name__)
    return ModuleFeatures(module, features_fn=features_fn, name=name)
