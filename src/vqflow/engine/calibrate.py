"""Fit-time calibration of a Detector on normals only (no test labels): score statistics,
verdict thresholds per learned concept, heatmap colour range, concept -> majority class."""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from vqflow.calibration import (
    TAIL_FIT,
    TAIL_IMAGES,
    Calibration,
    ScoreStats,
    concept_thresholds,
    standardisation,
    standardised_sum,
)
from vqflow.engine.features import FeatureSource
from vqflow.model.detector import Detector

STATS_IMAGES = 64  # training images whose maps give the 'train' normalisation statistics
KNN_BANK_IMAGES = 20000  # training normals kept for the image score's k-NN term (memory: N x C floats)


def spread_indices(n: int, k: int) -> torch.Tensor:
    """k indices spread evenly over range(n) (records are grouped by class: the first k would
    all be of the first class)."""
    if n <= k:
        return torch.arange(n)
    return torch.linspace(0, n - 1, k).round().long().unique()


def knn_bank(src: FeatureSource, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, C) unit-length global features of the training normals for the k-NN term, at most
    KNN_BANK_IMAGES of them, spread evenly over the records."""
    pick = spread_indices(len(src), KNN_BANK_IMAGES)
    with torch.no_grad():
        return torch.cat([Detector.global_feature(src.get(i, device)[3]) for i in pick.split(batch_size)])


def bank_local(det: Detector, src: FeatureSource, size: tuple[int, int], batch_size: int, device: torch.device):
    """(N,) the absolute local evidence of the training normals `knn_bank` holds (its rows, in order):
    what score.local_neighbours takes a new image's local part relative to."""
    det.knn_local = torch.zeros(0, device=device)  # absolute local parts while they are measured
    pick = spread_indices(len(src), KNN_BANK_IMAGES)
    with torch.no_grad():
        parts = [det.predict_features(src.get(i, device), size).evidence[:, 0] for i in pick.split(batch_size)]
    return torch.cat(parts)


def _predict(
    det: Detector, src: FeatureSource, size: tuple[int, int], batch_size: int, device: torch.device, knn_skip: int = 0
):
    """(image-score evidence (N, K), concepts (N,), a sample of pixel-map values); `knn_skip` as
    Detector.predict_features."""
    evidence, concepts, pixels = [], [], []
    with torch.no_grad():
        for idx in torch.arange(len(src)).split(batch_size):
            pred = det.predict_features(src.get(idx, device), size, knn_skip)
            evidence.append(pred.evidence.cpu())
            concepts.append(pred.concept.cpu())
            pixels.append(pred.anomaly_map[:, ::8, ::8].flatten().cpu())
    return torch.cat(evidence).double().numpy(), torch.cat(concepts).numpy(), torch.cat(pixels).double().numpy()


def calibrate(
    det: Detector,
    train_src: FeatureSource,
    val_src: FeatureSource | None,
    train_classes: list[str],
    size: tuple[int, int],
    quantile: float,
    concept_prior: float,
    batch_size: int,
    device: torch.device,
) -> Calibration:
    """Set and return `det.calibration` (and, under score.image_score=local_knn, `det.knn_bank`
    and `det.knn_local` from the training normals): the image score's standardisation from the held-out normals,
    each concept's typical score from the training normals, the margin above it from the
    held-out normals (training normals, which the model has seen, when none are held out:
    thresholds then run low, and `source` says so); see calibration.concept_thresholds.
    `train_classes` (one per training record) name each concept's majority class."""
    det.eval()
    stats = None
    if det.normalization == "train":
        with torch.no_grad():
            pick = spread_indices(len(train_src), STATS_IMAGES)
            ll = [det.log_likelihood(train_src.get(i, device), size)[0].cpu() for i in pick.split(batch_size)]
        stats = ScoreStats.from_loglik(torch.cat(ll))
    det.calibration = Calibration(stats=stats)
    knn = det.image_score == "local_knn"
    if knn:
        det.knn_bank = knn_bank(train_src, batch_size, device)
        no_local = torch.zeros(0, device=device)
        det.knn_local = bank_local(det, train_src, size, batch_size, device) if det.local_neighbours > 0 else no_local
    # A training normal in the bank is its own nearest neighbour: leave it out (skip 1), as it
    # would be for a new image; past KNN_BANK_IMAGES most are not in the bank and none is skipped.
    in_bank = knn and len(train_src) <= KNN_BANK_IMAGES
    train_ev, train_concepts, train_pix = _predict(det, train_src, size, batch_size, device, int(in_bank))
    held_out = val_src is not None and len(val_src) > 0
    ev, concept, pix = (
        _predict(det, val_src, size, batch_size, device) if held_out else (train_ev, train_concepts, train_pix)
    )
    center, scale = standardisation(ev) if det.image_score != "map" else ([], [])
    train_score, score = standardised_sum(train_ev, center, scale), standardised_sum(ev, center, scale)
    threshold, per_concept = concept_thresholds(
        train_score, train_concepts, score, concept, quantile, concept_prior, TAIL_IMAGES, TAIL_FIT
    )
    votes: dict[int, Counter] = {}
    for c, cls in zip(train_concepts.tolist(), train_classes):
        votes.setdefault(int(c), Counter())[cls] += 1
    majority = {c: sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for c, v in votes.items()}
    det.calibration = Calibration(
        threshold=threshold,
        concept_thresholds=per_concept,
        quantile=quantile,
        source="validation" if held_out else "training",
        n_images=int(len(score)),
        # Heatmap colours: from the typical normal pixel to the most anomalous normal pixel.
        map_range=(float(np.median(pix)), float(np.quantile(pix, 0.9999))),
        stats=stats,
        concept_classes=majority,
        score_center=center,
        score_scale=scale,
        tail_images=TAIL_IMAGES,
        tail_fit=TAIL_FIT,
    )
    return det.calibration
