"""How test images spread over CPC concepts, and how much of each codebook is in use."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ConceptTable:
    """Counts of test images of each true class (rows) per used CPC concept (columns)."""

    class_names: list[str]
    concept_ids: list[int]
    counts: np.ndarray  # (n_classes, n_used_concepts) int

    @property
    def purity(self) -> float:
        """Sum over concepts of the largest class count, divided by the number of images."""
        total = int(self.counts.sum())
        return float(self.counts.max(axis=0).sum() / total) if total else float("nan")


def concept_table(classes: list[str], concepts: np.ndarray) -> ConceptTable:
    """Cross-tabulate class names against concept indices (only concepts that occur)."""
    class_names = list(dict.fromkeys(classes))
    concepts = np.asarray(concepts).astype(np.int64)
    concept_ids = sorted(int(c) for c in np.unique(concepts))
    row = {name: i for i, name in enumerate(class_names)}
    col = {c: j for j, c in enumerate(concept_ids)}
    counts = np.zeros((len(class_names), len(concept_ids)), dtype=np.int64)
    for name, c in zip(classes, concepts):
        counts[row[name], col[int(c)]] += 1
    return ConceptTable(class_names, concept_ids, counts)


@dataclass
class UsageStats:
    """Summary of one codebook level: used codes out of all, and the usage perplexity."""

    used: int
    size: int
    perplexity: float  # exp(entropy of the usage distribution); 1 = one code, size = uniform


def usage_stats(counts: np.ndarray) -> UsageStats:
    """Used codes (count > 0) and perplexity of a usage-count vector."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    total = counts.sum()
    if total <= 0:
        return UsageStats(0, counts.size, float("nan"))
    p = counts[counts > 0] / total
    return UsageStats(int((counts > 0).sum()), counts.size, float(math.exp(-(p * np.log(p)).sum())))
