"""The one input of the report: everything an evaluation produced, gathered by the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqflow.calibration import Calibration
from vqflow.errors import VQFlowError


@dataclass
class ReportData:
    """Evaluation results of one run on one test set, as the report needs them."""

    title: str  # e.g. run name
    metrics: dict  # {"classes": {cls: {...seven keys...}}, "mean": {...}, "mean_all": float}
    paths: list[str]  # N test images
    classes: list[str]  # N class names
    labels: np.ndarray  # (N,) int 0/1
    scores: np.ndarray  # (N,) float image scores
    maps: np.ndarray | None  # (N, H, W) float32 anomaly maps at evaluation size
    masks: np.ndarray | None  # (N, H, W) bool ground truth, None if no masks
    images: Callable[[int], np.ndarray]  # i -> (H, W, 3) uint8 image at evaluation size
    concepts: np.ndarray | None  # (N,) int: CPC concept (code index) per test image
    code_usage: dict[str, np.ndarray]  # level name ("cpc", "cspc1".."cspc4") -> usage counts
    notes: list[str]  # free text lines (config summary, epoch, honesty notes)
    map_range: tuple[float, float] | None = None  # heatmap colour range fixed at fit (as predict's)
    calibration: Calibration | None = None  # the verdict rule `vqflow predict` applies (thresholds)
    train_log: Path | None = None  # the run's train_log.jsonl (one JSON object per epoch)


def check_report_data(data: ReportData) -> int:
    """Check that the per-image fields agree in length and shape; return N."""
    n = len(data.paths)
    per_image = {"classes": len(data.classes), "labels": len(data.labels), "scores": len(data.scores)}
    if data.concepts is not None:
        per_image["concepts"] = len(data.concepts)
    if data.maps is not None:
        per_image["maps"] = len(data.maps)
        if data.maps.ndim != 3:
            raise VQFlowError(f"report: maps must be (N, H, W), got shape {data.maps.shape}")
    if data.masks is not None:
        if data.maps is None:
            raise VQFlowError("report: masks given without maps; pass maps or set masks=None")
        if data.masks.shape != data.maps.shape:
            raise VQFlowError(f"report: masks shape {data.masks.shape} differs from maps shape {data.maps.shape}")
    for name, length in per_image.items():
        if length != n:
            raise VQFlowError(f"report: {name} has {length} entries but paths has {n}; pass one per image")
    if data.calibration is not None and not isinstance(data.calibration, Calibration):
        raise VQFlowError(f"report: calibration must be a Calibration, got {type(data.calibration).__name__}")
    if not isinstance(data.metrics, dict) or "classes" not in data.metrics:
        raise VQFlowError('report: metrics must be a dict with a "classes" key')
    return n
