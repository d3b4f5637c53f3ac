"""What fit fixes from held-out normals, never from test labels: score statistics, verdict
thresholds (global and per learned concept), the heatmap colour range, and each concept's
majority training class.

Plain data with no torch import, so the torch-free ONNX inferencer reads the same object
from the export's JSON sidecar that the torch detector carries in its checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vqflow.errors import VQFlowError


@dataclass
class ScoreStats:
    """Training-normal statistics for the dataset-level normalisation (score.normalization=train)."""

    mul_mean: float
    mul_std: float
    scale_mean: list[float]
    scale_std: list[float]

    @staticmethod
    def from_loglik(loglik: Any) -> ScoreStats:
        """From (N, S, H, W) log-likelihood maps (a torch tensor) of training normals."""
        nll = -loglik.sum(1)
        per_scale = -loglik.transpose(0, 1).flatten(1)
        return ScoreStats(
            float(nll.mean()),
            float(nll.std().clamp_min(1e-6)),
            per_scale.mean(1).tolist(),
            per_scale.std(1).clamp_min(1e-6).tolist(),
        )


def standardisation(evidence: Any) -> tuple[list[float], list[float]]:
    """Per component of (N, K) image-score evidence from normals: (center, scale) = the median
    and the spread between the 5% and 95% quantiles (robust to the odd outlier among a few
    dozen held-out images)."""
    e = np.asarray(evidence, dtype=np.float64)
    lo, mid, hi = np.quantile(e, [0.05, 0.5, 0.95], axis=0)
    scale = np.maximum(hi - lo, 1e-6 * np.maximum(np.abs(mid), 1.0))
    return mid.tolist(), scale.tolist()


def standardised_sum(evidence: Any, center: list[float], scale: list[float]) -> np.ndarray:
    """Image scores (N,) from (N, K) evidence: sum_k (e_k - center_k) / scale_k, or the plain sum
    without statistics (Detector.standardised_sum is the same in torch)."""
    e = np.asarray(evidence, dtype=np.float64)
    if not center:
        return e.sum(1)
    return ((e - np.asarray(center)) / np.asarray(scale)).sum(1)


def concept_offsets(scores: Any, concepts: Any, prior: float) -> tuple[float, dict[int, float]]:
    """The pooled median score and each concept's median, shrunk toward it with `prior` pseudo-images
    (a concept of n images keeps n / (n + prior) of its own offset)."""
    s, c = np.asarray(scores, dtype=np.float64), np.asarray(concepts)
    pooled = float(np.median(s))
    offsets = {}
    for k in np.unique(c):
        own = s[c == k]
        w = len(own) / (len(own) + prior)
        offsets[int(k)] = w * float(np.median(own)) + (1 - w) * pooled
    return pooled, offsets


def concept_excess(scores: Any, concepts: Any, pooled: float, offsets: dict[int, float]) -> np.ndarray:
    """Each score's excess over its concept's offset (the pooled one for a concept without an offset)."""
    return np.array([s - offsets.get(int(k), pooled) for s, k in zip(np.asarray(scores), np.asarray(concepts))])


TAIL_IMAGES = 20  # training normals a concept needs before its own tail bounds its threshold
TAIL_FIT = 5  # largest values an exponential tail is fitted to when a sample is too small for its quantile


def tail_quantile(values: Any, q: float, top: int = TAIL_FIT) -> float:
    """The `q` quantile of `values`, from an exponential tail fitted to the `top` largest where
    fewer than `top` values are expected above it (peaks over threshold); `top` 0: numpy's linear
    quantile.

    With a few dozen held-out normals the linear 0.99 quantile falls between the two largest,
    on average well below the population's: new normals then exceed it more often than 1 - q.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    m = min(top, n - 1)
    if m < 1 or q >= 1 or n * (1 - q) >= m:
        return float(np.quantile(x, q))
    u = x[n - m - 1]  # the threshold the top m exceed
    beta = float(np.mean(x[n - m :] - u))  # the exponential's scale (maximum likelihood)
    return float(u + beta * math.log(m / (n * (1 - q))))


def concept_thresholds(
    train_scores: Any,
    train_concepts: Any,
    val_scores: Any,
    val_concepts: Any,
    quantile: float,
    prior: float,
    tail_images: int = TAIL_IMAGES,
    tail_fit: int = TAIL_FIT,
) -> tuple[float, dict[int, float]]:
    """Verdict thresholds per learned concept: (global threshold, {concept: threshold}).

    Each concept's typical normal score comes from the training normals (many per concept, where
    held-out ones are a handful); how far above it a normal may score comes from the held-out
    normals, pooled over concepts: the `quantile` of (score - its concept's offset). A concept no
    training normal fell into gets the pooled offset: the global threshold.

    A pooled margin is too small for a concept whose normals vary more than most (a texture with
    rare large structures). So a concept with at least `tail_images` training normals (0: never)
    also keeps its threshold above the `quantile` of its own training normals' scores, raised by
    how far held-out normals sit above training ones (the median excess, the model having seen
    the training normals). benchmarks/results/calibration_*.md compares this rule with others.

    Both quantiles are `tail_quantile`s (`tail_fit` the values its tail is fitted to; 0: linear).
    """
    pooled, offsets = concept_offsets(train_scores, train_concepts, prior)
    excess = concept_excess(val_scores, val_concepts, pooled, offsets)
    margin = tail_quantile(excess, quantile, tail_fit)
    per = {k: off + margin for k, off in offsets.items()}
    if tail_images > 0:
        gap = max(float(np.median(excess)), 0.0)
        ts, tc = np.asarray(train_scores, dtype=np.float64), np.asarray(train_concepts)
        for k in per:
            own = ts[tc == k]
            if len(own) >= tail_images:
                per[k] = max(per[k], tail_quantile(own, quantile, tail_fit) + gap)
    return pooled + margin, per


@dataclass
class Calibration:
    """Verdict thresholds and display range of a trained detector (saved with it).

    `concept_thresholds` hold each learned concept's threshold (see `concept_thresholds()`);
    `threshold` is the one for a concept that fit never saw.
    `map_range` is the heatmap colour range (typical to most anomalous normal pixel), shared
    by the report and `vqflow predict` so that a colour means the same score in both.
    `score_center` and `score_scale` standardise the image score's components (score.image_score
    "local_knn" or "combined"); empty: the score is their plain sum. `tail_images` (the
    training-tail floor) and `tail_fit` (the quantile estimator) are concept_thresholds' settings.
    """

    threshold: float = math.nan
    concept_thresholds: dict[int, float] = field(default_factory=dict)
    quantile: float = 0.99
    source: str = "validation"  # which normals: "validation" (held out) or "training" (seen)
    n_images: int = 0
    map_range: tuple[float, float] = (0.0, 1.0)
    stats: ScoreStats | None = None
    concept_classes: dict[int, str] = field(default_factory=dict)  # concept -> majority class
    score_center: list[float] = field(default_factory=list)
    score_scale: list[float] = field(default_factory=list)
    tail_images: int = 0  # concept_thresholds' training-tail floor (0: none, as in older checkpoints)
    tail_fit: int = 0  # values tail_quantile fits its tail to (0: the linear quantile, as in older checkpoints)

    @property
    def ready(self) -> bool:
        """True once thresholds exist (fit finished)."""
        return math.isfinite(self.threshold)

    def threshold_for(self, concept: int) -> float:
        """The concept's own threshold, or the global one for a concept fit never saw."""
        return float(self.concept_thresholds.get(int(concept), self.threshold))

    def combine(self, evidence: Any) -> np.ndarray:
        """Image scores (N,) from (N, K) evidence with this calibration's statistics."""
        return standardised_sum(evidence, self.score_center, self.score_scale)

    def verdict(self, score: float, concept: int, threshold: float | None = None) -> tuple[float, str]:
        """(threshold used, "anomalous" or "normal") for one image; `threshold` overrides the
        calibrated ones."""
        thr = self.threshold_for(concept) if threshold is None else float(threshold)
        return thr, "anomalous" if score > thr else "normal"

    def to_dict(self) -> dict[str, Any]:
        """JSON- and torch.load(weights_only)-safe form (string keys, lists, floats)."""
        d = asdict(self)
        d["concept_thresholds"] = {str(k): float(v) for k, v in self.concept_thresholds.items()}
        d["concept_classes"] = {str(k): v for k, v in self.concept_classes.items()}
        d["map_range"] = [float(v) for v in self.map_range]
        d["score_center"] = [float(v) for v in self.score_center]
        d["score_scale"] = [float(v) for v in self.score_scale]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "calibration") -> Calibration:
        """Read `to_dict`'s form, or the untyped layout of vqflow 0.1.0 checkpoints."""
        if not d:
            return cls()
        try:
            if "thresholds" in d:  # vqflow 0.1.0: {"stats", "thresholds": {"global", ...}, "map_range"}
                th = d["thresholds"]
                d = {
                    "threshold": th["global"],
                    "concept_thresholds": th.get("per_concept", {}),
                    "quantile": th.get("quantile", 0.99),
                    "source": th.get("source", "validation"),
                    "n_images": th.get("n", 0),
                    "map_range": d.get("map_range", (0.0, 1.0)),
                    "stats": d.get("stats"),
                }
            stats = d.get("stats")
            lo, hi = d.get("map_range", (0.0, 1.0))
            return cls(
                threshold=float(d["threshold"]),
                concept_thresholds={int(k): float(v) for k, v in d.get("concept_thresholds", {}).items()},
                quantile=float(d.get("quantile", 0.99)),
                source=str(d.get("source", "validation")),
                n_images=int(d.get("n_images", 0)),
                map_range=(float(lo), float(hi)),
                stats=ScoreStats(**stats) if stats else None,
                concept_classes={int(k): str(v) for k, v in d.get("concept_classes", {}).items()},
                score_center=[float(v) for v in d.get("score_center", [])],
                score_scale=[float(v) for v in d.get("score_scale", [])],
                tail_images=int(d.get("tail_images", 0)),
                tail_fit=int(d.get("tail_fit", 0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise VQFlowError(f"{where} is damaged ({type(e).__name__}: {e}); export or fit the run again") from None
