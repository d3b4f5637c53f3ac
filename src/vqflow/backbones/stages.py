"""Pick the four stage maps (strides 4, 8, 16, 32) out of a list of feature strides."""

from __future__ import annotations

from collections.abc import Sequence

from vqflow.backbones.base import STAGE_STRIDES


def pick_stage_indices(strides: Sequence[int]) -> tuple[int, int, int, int] | None:
    """Index of the deepest feature at each stride 4, 8, 16, 32, or None if one is missing.

    The deepest map at a stride is the most processed one (e.g. the last block of a stage).
    """
    picked = []
    for target in STAGE_STRIDES:
        hits = [i for i, s in enumerate(strides) if s == target]
        if not hits:
            return None
        picked.append(hits[-1])
    return tuple(picked)  # type: ignore[return-value]
