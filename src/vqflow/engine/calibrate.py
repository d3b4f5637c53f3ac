"""Fit-time calibration of a Detector on normals only (no test labels): score statistics,
verdict thresholds per learned concept, heatmap colour range, concept -> majority class."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from vqflow.calibration import Calibration, ScoreStats
from vqflow.engine.features import FeatureSource
from vqflow.model.detector import Detector

STATS_IMAGES = 64  # training images whose maps give the 'train' normalisation statistics


def spread_indices(n: int, k: int) -> torch.Tensor:
    """k indices spread evenly over range(n) (records are grouped by class: the first k would
    all be of the first class)."""
    if n <= k:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k).round().long().unique()


def _predict(det: Detector, src: FeatureSource, size: tuple[int, int], batch_size: int, device: torch.device):
    scores, concepts, pixels = [], [], []
    with torch.no_grad():
        for idx in torch.arange(len(src)).split(batch_size):
            pred = det.predict_features(src.get(idx, device), size)
            scores.append(pred.score.cpu())
            concepts.append(pred.concept.cpu())
            pixels.append(pred.anomaly_map[:, ::8, ::8].flatten().cpu())
    return torch.cat(scores).double().numpy(), torch.cat(concepts).numpy(), torch.cat(pixels).double().numpy()


def calibrate(
    det: Detector,
    train_src: FeatureSource,
    val_src: FeatureSource | None,
    train_classes: list[str],
    size: tuple[int, int],
    quantile: float,
    min_concept_images: int,
    batch_size: int,
    device: torch.device,
) -> Calibration:
    """Set and return `det.calibration` from its scores on held-out normals (training normals,
    which the model has seen, when none are held out: thresholds then run low, and `source`
    says so). `train_classes` (one per training record) name each concept's majority class."""
    det.eval()
    stats = None
    if det.normalization == "train":
        with torch.no_grad():
            pick = spread_indices(len(train_src), STATS_IMAGES)
            ll = [det.log_likelihood(train_src.get(i, device), size)[0].cpu() for i in pick.split(batch_size)]
        stats = ScoreStats.from_loglik(torch.cat(ll))
    det.calibration = Calibration(stats=stats)
    src = val_src if val_src is not None and len(val_src) > 0 else train_src
    score, concept, pix = _predict(det, src, size, batch_size, device)
    per_concept = {}
    for c in np.unique(concept):
        sel = score[concept == c]
        if len(sel) >= min_concept_images:
            per_concept[int(c)] = float(np.quantile(sel, quantile))
    with torch.no_grad():
        train_concepts = torch.cat(
            [
                det.head.concepts(train_src.get(i, device)[-1]).cpu()
                for i in torch.arange(len(train_src)).split(batch_size)
            ]
        ).numpy()
    votes: dict[int, Counter] = {}
    for c, cls in zip(train_concepts.tolist(), train_classes):
        votes.setdefault(int(c), Counter())[cls] += 1
    majority = {c: sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for c, v in votes.items()}
    det.calibration = Calibration(
        threshold=float(np.quantile(score, quantile)),
        concept_thresholds=per_concept,
        quantile=quantile,
        source="validation" if src is val_src else "training",
        n_images=int(len(score)),
        # Heatmap colours: from the typical normal pixel to the most anomalous normal pixel.
        map_range=(float(np.median(pix)), float(np.quantile(pix, 0.9999))),
        stats=stats,
        concept_classes=majority,
    )
    return det.calibration
