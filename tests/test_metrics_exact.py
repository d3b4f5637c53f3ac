"""Exact image and pixel metrics against scikit-learn, including ties and degenerate classes."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from vqflow.errors import VQFlowError
from vqflow.metrics import f1_max, image_ap, image_auroc, pixel_ap, pixel_auroc, pixel_f1max


def sklearn_f1max(y: np.ndarray, s: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [3, 20, None])
def test_image_metrics_match_sklearn(seed: int, levels: int | None) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 40)
    y[:2] = (0, 1)
    s = rng.normal(size=40) + y  # ties when quantised to few levels
    if levels is not None:
        s = np.round(s * levels / 4)
    assert image_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert f1_max(y, s) == pytest.approx(sklearn_f1max(y, s), abs=1e-12)


def test_constant_scores() -> None:
    y = np.array([0, 1, 1, 0, 0])
    s = np.full(5, 0.7)
    assert image_auroc(y, s) == pytest.approx(0.5)
    assert image_ap(y, s) == pytest.approx(average_precision_score(y, s))
    assert f1_max(y, s) == pytest.approx(sklearn_f1max(y, s))


def test_class_without_anomalies_is_none() -> None:
    y = np.zeros(6, dtype=int)
    s = np.arange(6.0)
    assert image_auroc(y, s) is None
    assert image_ap(y, s) is None
    assert f1_max(y, s) is None


def test_class_without_normals() -> None:
    y = np.ones(4, dtype=bool)
    s = np.array([0.1, 0.4, 0.4, 0.9])
    assert image_auroc(y, s) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert image_ap(y, s) == pytest.approx(average_precision_score(y, s))
    assert f1_max(y, s) == pytest.approx(sklearn_f1max(y, s))


@pytest.mark.parametrize("seed", range(4))
def test_pixel_metrics_match_sklearn_with_empty_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    masks = np.zeros((5, 12, 10), dtype=bool)
    masks[1, 2:6, 3:7] = True
    masks[3, 8:, :4] = True  # images 0, 2, 4 have no anomalous pixel
    maps = np.round(rng.random(masks.shape) * 8) / 8 + 0.4 * masks  # many ties
    y, s = masks.ravel(), maps.ravel()
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert pixel_ap(masks, maps) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert pixel_f1max(masks, maps) == pytest.approx(sklearn_f1max(y, s), abs=1e-12)


def test_pixel_metrics_accept_channel_axis_and_float_masks() -> None:
    rng = np.random.default_rng(9)
    masks = (rng.random((3, 1, 6, 6)) > 0.7).astype(np.float32)  # as in vqflow Batch.mask
    maps = rng.random((3, 1, 6, 6))
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(masks.ravel() > 0, maps.ravel()), abs=1e-12)


def test_pixel_metrics_without_anomalous_pixels() -> None:
    masks = np.zeros((2, 4, 4))
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert pixel_auroc(masks, maps) is None and pixel_ap(masks, maps) is None and pixel_f1max(masks, maps) is None


def test_values_in_unit_interval_for_reversed_scores() -> None:
    y = np.array([1, 1, 0, 0])
    s = np.array([0.0, 0.1, 0.8, 0.9])
    values = [image_auroc(y, s), image_ap(y, s), f1_max(y, s)]
    assert values[0] == pytest.approx(roc_auc_score(y, s))
    assert all(0.0 <= v <= 1.0 for v in values)


@pytest.mark.parametrize(
    "labels, scores, key",
    [
        ([0, 1], [0.1, float("nan")], "scores"),
        ([0, 1, 1], [0.1, 0.2], "scores"),
        ([0, 2], [0.1, 0.2], "labels"),
        ([], [], "labels"),
    ],
)
def test_bad_image_input_raises(labels: list, scores: list, key: str) -> None:
    with pytest.raises(VQFlowError, match=key):
        image_auroc(labels, scores)


def test_bad_pixel_input_raises() -> None:
    with pytest.raises(VQFlowError, match="masks"):
        pixel_auroc(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(VQFlowError, match="maps"):
        pixel_ap(np.zeros((1, 2, 2)), np.array([[[0.0, np.inf], [0.0, 1.0]]]))
