"""The result every dataset loader returns: train/test record lists and whether masks exist."""

from __future__ import annotations

from dataclasses import dataclass, field

from vqflow.data.sample import Record


@dataclass
class Splits:
    """Train records (normal only, label 0) and test records (all), over one or more classes.

    `has_masks` says whether pixel ground truth exists; `mask_classes` names the classes
    that have it (per-class pixel metrics apply only there when datasets are mixed).
    """

    train: list[Record]
    test: list[Record]
    has_masks: bool
    mask_classes: frozenset[str] = field(default_factory=frozenset)

    @property
    def classes(self) -> list[str]:
        """Sorted class names present in train or test."""
        return sorted({r.cls for r in self.train} | {r.cls for r in self.test})
