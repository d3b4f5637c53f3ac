"""Class means and the overall mean of the metrics table."""

import pytest

from vqflow.metrics import METRIC_KEYS, summarize


def test_means_ignore_none() -> None:
    per_class = {
        "a": {
            "image_auroc": 0.9,
            "image_ap": 0.8,
            "image_f1max": 0.7,
            "pixel_auroc": 0.95,
            "pixel_ap": 0.5,
            "pixel_f1max": 0.6,
            "aupro": 0.85,
        },
        "b": {
            "image_auroc": None,
            "image_ap": None,
            "image_f1max": None,
            "pixel_auroc": 0.75,
            "pixel_ap": 0.3,
            "pixel_f1max": 0.4,
            "aupro": None,
        },
        "c": {
            "image_auroc": 0.7,
            "image_ap": 0.6,
            "image_f1max": 0.5,
            "pixel_auroc": None,
            "pixel_ap": None,
            "pixel_f1max": None,
            "aupro": None,
        },
    }
    out = summarize(per_class)
    assert out["classes"] is per_class
    for key in METRIC_KEYS:
        values = [row[key] for row in per_class.values() if row[key] is not None]
        assert out["mean"][key] == pytest.approx(sum(values) / len(values))
    assert out["mean_all"] == pytest.approx(sum(out["mean"][k] for k in METRIC_KEYS) / 7)


def test_undefined_keys_and_no_classes() -> None:
    per_class = {"x": dict.fromkeys(METRIC_KEYS), "y": dict.fromkeys(METRIC_KEYS)}
    per_class["x"]["image_auroc"] = 0.6
    per_class["y"]["image_auroc"] = 0.8
    out = summarize(per_class)
    assert out["mean"]["image_auroc"] == pytest.approx(0.7)
    assert all(out["mean"][k] is None for k in METRIC_KEYS if k != "image_auroc")
    assert out["mean_all"] == pytest.approx(0.7)
    empty = summarize({})
    assert empty["mean_all"] is None and all(v is None for v in empty["mean"].values())
