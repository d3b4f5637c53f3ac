"""Tests for vqflow.report: overlay contours, the text table and the html report."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from vqflow.errors import VQFlowError
from vqflow.report import ReportData, format_table, overlay, save_png, write_report

CLASSES = ["bottle", "cable", "screw"]
KEYS = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"]
SIZE = 32


def _metrics(rng: np.random.Generator, with_pixel: bool) -> dict:
    classes = {}
    for name in CLASSES:
        values = {k: float(rng.uniform(0.5, 1.0)) for k in KEYS}
        if not with_pixel:
            for k in KEYS[3:]:
                values[k] = None
        classes[name] = values
    mean = {}
    for k in KEYS:
        vals = [classes[c][k] for c in CLASSES if classes[c][k] is not None]
        mean[k] = float(np.mean(vals)) if vals else None
    present = [v for v in mean.values() if v is not None]
    return {"classes": classes, "mean": mean, "mean_all": float(np.mean(present))}


def make_data(with_masks: bool = True, with_concepts: bool = True, per_class: int = 10) -> ReportData:
    """A small synthetic evaluation: 3 classes, 32x32 maps, square defects on anomalies."""
    rng = np.random.default_rng(1)
    n = per_class * len(CLASSES)
    classes = [c for c in CLASSES for _ in range(per_class)]
    labels = np.array([i % 2 for i in range(n)])
    scores = rng.normal(size=n) + 2.0 * labels
    images = rng.integers(0, 256, size=(n, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((n, SIZE, SIZE), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(4, SIZE - 14, size=2)
        masks[i, y : y + 8, x : x + 10] = True
    maps = (rng.random((n, SIZE, SIZE)) + 0.6 * masks).astype(np.float32)
    concepts = rng.integers(0, 6, size=n) + 10 * np.array([CLASSES.index(c) % 2 for c in classes])
    return ReportData(
        title="synthetic run",
        metrics=_metrics(rng, with_masks),
        paths=[f"/data/{c}/test/{i:03d}.png" for i, c in enumerate(classes)],
        classes=classes,
        labels=labels,
        scores=scores,
        maps=maps if with_masks else None,
        masks=masks if with_masks else None,
        images=lambda i: images[i],
        concepts=concepts if with_concepts else None,
        code_usage={"cpc": rng.integers(0, 50, size=32), "cspc1": rng.integers(0, 9, size=64)},
        notes=["epoch 60 (last)", "backbone <efficientnet> & friends"],
    )


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)


def _purity_by_brute_force(classes: list[str], concepts: np.ndarray) -> float:
    total = 0
    for c in set(int(v) for v in concepts):
        members = [cls for cls, k in zip(classes, concepts) if int(k) == c]
        total += max(members.count(name) for name in set(members))
    return total / len(classes)


def test_report_html_references_existing_files_and_shows_inputs(tmp_path: Path) -> None:
    data = make_data()
    html_path = write_report(tmp_path, data)
    assert html_path == tmp_path / "report.html" and html_path.is_file()
    page = html_path.read_text(encoding="utf-8")
    sources = _img_sources(page)
    assert len(sources) >= 3 * 8 + 4  # galleries + roc, pro, histograms, concepts, usage
    for src in sources:
        assert not src.startswith(("http:", "https:", "/", "data:"))
        assert (tmp_path / src).is_file(), src
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for name in CLASSES:
        assert name in page
        for k in KEYS:
            assert f">{100 * data.metrics['classes'][name][k]:.1f}<" in page
    for k in KEYS:
        assert f">{100 * data.metrics['mean'][k]:.1f}<" in page
    assert f"{100 * data.metrics['mean_all']:.1f}" in page
    assert "backbone &lt;efficientnet&gt; &amp; friends" in page
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_concept_purity_matches_brute_force(tmp_path: Path) -> None:
    data = make_data()
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    expected = _purity_by_brute_force(data.classes, data.concepts)
    match = re.search(r'<div class="v">([0-9.]+)</div><div class="k">concept purity', page)
    assert match is not None
    assert float(match.group(1)) == pytest.approx(100 * expected, abs=0.051)
    for c in sorted(set(int(v) for v in data.concepts)):
        assert f"<th>{c}</th>" in page
    unused = sorted(set(range(20)) - set(int(v) for v in data.concepts))
    for c in unused:
        assert f"<th>{c}</th>" not in page


def test_overlay_marks_exactly_the_mask_boundary() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
    amap = rng.random((SIZE, SIZE)).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[5:15, 8:20] = True
    mask[15:20, 8:11] = True  # an L shape, so the boundary is not just a rectangle
    plain = overlay(image, amap)
    marked = overlay(image, amap, mask)
    assert plain.dtype == np.uint8 and plain.shape == (SIZE, SIZE, 3)
    boundary = np.zeros_like(mask)
    for y in range(SIZE):
        for x in range(SIZE):
            if mask[y, x]:
                for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < SIZE and 0 <= xx < SIZE and not mask[yy, xx]:
                        boundary[y, x] = True
    changed = np.any(plain != marked, axis=2)
    np.testing.assert_array_equal(changed, boundary)


def test_overlay_colour_range_follows_vmin_vmax() -> None:
    image = np.full((4, 4, 3), 128, dtype=np.uint8)
    amap = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    below = overlay(image, amap, vmin=5.0, vmax=10.0)  # every value under vmin: bottom colour
    bottom = np.array(matplotlib.colormaps["turbo"](0.0)[:3]) * 255.0
    np.testing.assert_allclose(below.reshape(-1, 3), np.broadcast_to(0.5 * 128 + 0.5 * bottom, (16, 3)), atol=0.51)
    own = overlay(image, amap)
    assert not np.array_equal(own[0, 0], own[-1, -1])


def test_save_png_round_trips(tmp_path: Path) -> None:
    from PIL import Image

    array = np.random.default_rng(0).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    path = save_png(array, tmp_path / "sub" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    with pytest.raises(VQFlowError):
        save_png(array.astype(np.float32), tmp_path / "y.png")


def test_format_table_rows_and_missing_values() -> None:
    metrics = make_data(with_masks=False).metrics
    text = format_table(metrics)
    lines = text.splitlines()
    for name in CLASSES + ["mean"]:
        row = next(line for line in lines if line.split()[:1] == [name])
        values = metrics["mean"] if name == "mean" else metrics["classes"][name]
        expected = [f"{100 * values[k]:.1f}" if values[k] is not None else "-" for k in KEYS]
        assert row.split()[1:] == expected
    header = lines[0].split()
    assert header == ["class", "I-AUROC", "I-AP", "I-F1", "P-AUROC", "P-AP", "P-F1", "AUPRO"]
    assert len({len(line) for line in lines[:-1]}) == 1  # fixed width


def test_report_without_masks_or_concepts(tmp_path: Path) -> None:
    data = make_data(with_masks=False, with_concepts=False)
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    for src in _img_sources(page):
        assert (tmp_path / src).is_file(), src
    assert "pro.png" not in page and "concepts.png" not in page
    assert "—" in page  # pixel metrics shown as missing
    for name in CLASSES:
        assert name in page


def test_single_class_without_anomalies(tmp_path: Path) -> None:
    data = make_data(per_class=3)
    keep = [i for i, c in enumerate(data.classes) if c == "bottle"]
    data.paths = [data.paths[i] for i in keep]
    data.classes = ["bottle"] * len(keep)
    data.labels = np.zeros(len(keep), dtype=int)
    data.scores = data.scores[keep]
    data.maps = data.maps[keep]
    data.masks = np.zeros_like(data.masks[keep])
    data.concepts = data.concepts[keep]
    images = data.images
    data.images = lambda i: images(keep[i])
    data.metrics = {"classes": {"bottle": {k: None for k in KEYS}}, "mean": {k: None for k in KEYS}}
    data.code_usage = {}
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    for src in _img_sources(page):
        assert (tmp_path / src).is_file(), src
    assert "bottle" in page


def test_mismatched_lengths_raise(tmp_path: Path) -> None:
    data = make_data()
    data.scores = data.scores[:-1]
    with pytest.raises(VQFlowError, match="scores"):
        write_report(tmp_path, data)


def test_report_is_deterministic(tmp_path: Path) -> None:
    a = write_report(tmp_path / "a", make_data()).read_bytes()
    b = write_report(tmp_path / "b", make_data()).read_bytes()
    assert a == b


def test_overlay_colours_equal_matplotlib_turbo_blend() -> None:
    """The table lookup gives exactly matplotlib's turbo colormap, blended half and half."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    amap = (rng.random((37, 53)) * 3).astype(np.float32)
    amap[0, :5] = [0.5, 2.5, 0.4999, 2.5001, 1.5]  # the ends of the range and just past them
    got = overlay(image, amap, vmin=0.5, vmax=2.5)
    scaled = np.clip((amap - 0.5) / 2.0, 0, 1)
    colours = matplotlib.colormaps["turbo"](scaled)[..., :3] * 255.0
    expected = np.clip(np.rint(0.5 * image.astype(np.float64) + 0.5 * colours), 0, 255)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    assert (got == expected).mean() > 0.99
