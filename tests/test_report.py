"""Tests for vqflow.report: overlay contours, the text table and the html report."""

from __future__ import annotations

import base64
import html as htmllib
import io
import json
import os
import re
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score

import vqflow.report.plots as plots
from vqflow.calibration import Calibration
from vqflow.errors import VQFlowError
from vqflow.metrics import compute_class_metrics, summarize
from vqflow.report import ReportData, format_table, overlay, save_image, write_report
from vqflow.report.decisions import format_score
from vqflow.report.overlay import with_colorbar
from vqflow.report.training import read_train_log

CLASSES = ["bottle", "cable", "screw"]
KEYS = ["image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_ap", "pixel_f1max", "aupro"]
SIZE = 32
DEFECTS = ["crack", "scratch", "hole"]
THRESHOLD = 1.0
CONCEPT_THRESHOLDS = {1: 0.2, 11: 2.2, 99: 5.0}  # concept 99 never occurs in the test set
MAP_RANGE = (0.2, 1.4)


def _metrics(classes: list[str], labels, scores, masks, maps) -> dict:
    """metrics.json layout computed from the data itself, as evaluate does."""
    array = np.asarray(classes)
    per_class = {}
    for name in CLASSES:
        sel = array == name
        pixel = (masks[sel], maps[sel]) if masks is not None else (None, None)
        per_class[name] = compute_class_metrics(labels[sel], scores[sel], *pixel)
    return summarize(per_class)


def make_data(
    with_masks: bool = True, with_concepts: bool = True, per_class: int = 10, mvtec_paths: bool = True
) -> ReportData:
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
    folders = ["good" if labels[i] == 0 else DEFECTS[(i // 2) % len(DEFECTS)] for i in range(n)]
    paths = (
        [f"/data/{c}/test/{f}/{i:03d}.png" for i, (c, f) in enumerate(zip(classes, folders))]
        if mvtec_paths
        else [f"/data/{c}/{i:03d}.png" for i, c in enumerate(classes)]
    )
    return ReportData(
        title="synthetic run",
        metrics=_metrics(classes, labels, scores, masks if with_masks else None, maps),
        paths=paths,
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


def _calibration(per_concept: bool = True) -> Calibration:
    return Calibration(
        threshold=THRESHOLD,
        concept_thresholds=dict(CONCEPT_THRESHOLDS) if per_concept else {},
        n_images=20,
        map_range=MAP_RANGE,
    )


def _write_log(path: Path) -> Path:
    lines = [
        {"epoch": 1, "loss": 9.0, "val_nll": 5.0, "codebooks": {"cpc": {"used": 8, "codes": 8, "perplexity": 7.0}}},
        {"epoch": 2, "loss": 4.0, "val_nll": None, "codebooks": {"cpc": {"used": 6, "codes": 8, "perplexity": 5.0}}},
        {"epoch": 3, "loss": 3.0, "codebooks": {"cpc": {"used": 5, "codes": 8, "perplexity": 4.0}}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\nnot json\n", encoding="utf-8")
    return path


def decision_data(tmp: Path, per_concept: bool = True) -> ReportData:
    """make_data with the calibrated verdict rule, the heatmap range and a training log."""
    data = make_data()
    data.calibration = _calibration(per_concept)
    data.map_range = MAP_RANGE
    data.train_log = _write_log(tmp / "train_log.jsonl")
    return data


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[ReportData, str, Path]:
    """One report with decisions (per-concept thresholds), built once for the read-only tests."""
    out = tmp_path_factory.mktemp("report")
    data = decision_data(out)
    page = write_report(out, data).read_text(encoding="utf-8")
    return data, page, out


def _img_sources(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]+)"', page)


def _section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}"[^>]*>.*?</section>', page, flags=re.S)
    assert match is not None, anchor
    return match.group(0)


def _text(fragment: str) -> str:
    """Visible text of an html fragment (tags removed, entities decoded, spaces collapsed)."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def _row_cells(fragment: str, **attrs: str) -> list[str]:
    """Cell texts of the table row with the given data-* attributes."""
    pattern = "".join(rf'(?=[^>]*data-{k}="{re.escape(v)}")' for k, v in attrs.items())
    match = re.search(rf"<tr{pattern}[^>]*>(.*?)</tr>", fragment, flags=re.S)
    assert match is not None, attrs
    return [_text(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), flags=re.S)]


def _decode(src: str) -> np.ndarray:
    assert src.startswith("data:image/"), src[:40]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))


def _expected_verdicts(data: ReportData) -> tuple[np.ndarray, np.ndarray]:
    """Independent of the report code: each image's threshold and whether score > threshold."""
    thresholds = np.array([CONCEPT_THRESHOLDS.get(int(c), THRESHOLD) for c in data.concepts])
    return thresholds, np.asarray(data.scores) > thresholds


def _purity_by_brute_force(classes: list[str], concepts: np.ndarray) -> float:
    total = 0
    for c in set(int(v) for v in concepts):
        members = [cls for cls, k in zip(classes, concepts) if int(k) == c]
        total += max(members.count(name) for name in set(members))
    return total / len(classes)


def test_report_is_one_file_with_embedded_images_and_shows_inputs(tmp_path: Path) -> None:
    data = make_data()
    html_path = write_report(tmp_path, data)
    assert html_path == tmp_path / "report.html" and html_path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"], "one file, no report_files/"
    page = html_path.read_text(encoding="utf-8")
    sources = _img_sources(page)
    assert len(sources) >= 3 * 8 + 12 + 6  # galleries, mistakes, roc, pr, pro, histograms, concepts, usage
    for src in sources:
        assert _decode(src).size > 0
    assert "report_files" not in page and "<@asset" not in page
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


@pytest.mark.parametrize("how", ["asked", "too large"])
def test_files_mode_writes_images_beside_and_says_so(tmp_path: Path, monkeypatch, how: str) -> None:
    import vqflow.report.writer as writer

    if how == "too large":
        monkeypatch.setattr(writer, "EMBED_LIMIT", 1000)
    previous = os.umask(0o027)
    try:
        path = write_report(tmp_path, make_data(per_class=4), embed=False if how == "asked" else None)
    finally:
        os.umask(previous)
    page = path.read_text(encoding="utf-8")
    notice = re.search(r'<p class="notice">(.*?)</p>', page)
    assert notice is not None and "report_files/" in _text(notice.group(1)) and "together" in notice.group(1)
    sources = _img_sources(page)
    assert sources and all(src.startswith("report_files/") for src in sources)
    for src in sources:
        assert (tmp_path / src).is_file(), src
    for created in [path, *(tmp_path / "report_files").iterdir()]:
        assert created.stat().st_mode & 0o777 == 0o640, created  # 0o666 less the umask


def test_threshold_is_drawn_in_the_score_histograms(built, monkeypatch, tmp_path: Path) -> None:
    data, page, _ = built
    section = _section(page, "scores")
    assert f'data-threshold="{THRESHOLD!r}"' in section
    assert f"working threshold {format_score(THRESHOLD)}" in _text(section)
    assert "per-concept thresholds" in _text(section)
    seen = {}
    monkeypatch.setattr(plots, "histogram_figure", lambda panels, legend: seen.update(panels) or b"png")
    write_report(tmp_path, decision_data(tmp_path), embed=False)
    thresholds, _ = _expected_verdicts(data)
    for name in CLASSES:
        own = thresholds[np.asarray(data.classes) == name]
        assert seen[name].threshold == THRESHOLD
        assert set(seen[name].concept_thresholds) == set(own.tolist()) - {THRESHOLD}


def test_false_alarms_and_misses_per_class_match_an_independent_count(built) -> None:
    data, page, _ = built
    section = _section(page, "decisions")
    _, flagged = _expected_verdicts(data)
    labels = np.asarray(data.labels)
    classes = np.asarray(data.classes)
    assert flagged.any() and (~flagged).any()
    for name in [*CLASSES, "total"]:
        sel = np.ones(labels.size, bool) if name == "total" else classes == name
        normal, defective = sel & (labels == 0), sel & (labels == 1)
        fa, missed = int((normal & flagged).sum()), int((defective & ~flagged).sum())
        cells = _row_cells(section, **{"class": name})
        assert cells[1:] == [
            str(normal.sum()),
            str(fa),
            f"{100 * fa / normal.sum():.1f}%",
            str(defective.sum()),
            str(missed),
            f"{100 * missed / defective.sum():.1f}%",
        ], name


def test_catch_rate_per_defect_type_matches_an_independent_count(built, tmp_path: Path) -> None:
    data, page, _ = built
    section = _section(page, "decisions")
    _, flagged = _expected_verdicts(data)
    rows = 0
    for i in np.flatnonzero(np.asarray(data.labels) == 1):
        name, defect = data.classes[i], data.paths[i].split("/")[-2]
        same = [
            j
            for j in range(len(data.paths))
            if data.labels[j] == 1 and data.classes[j] == name and data.paths[j].split("/")[-2] == defect
        ]
        caught = int(flagged[same].sum())
        assert _row_cells(section, **{"class": name, "defect": defect}) == [
            defect,
            str(len(same)),
            str(caught),
            f"{100 * caught / len(same):.1f}%",
        ]
        rows += 1
    kinds = {(c, p.split("/")[-2]) for c, p, y in zip(data.classes, data.paths, data.labels) if y}
    assert rows and section.count("data-defect=") == len(kinds) > 3
    table = section[section.index('<table class="defects"') :]
    table = table[: table.index("</table>")]
    for name in {c for c, _ in kinds}:
        n = sum(1 for c, _ in kinds if c == name)
        assert table.count(f'rowspan="{n}">{name}</th>') == 1, "each class named once, spanning its defect types"
    plain = make_data(mvtec_paths=False)
    plain.calibration = _calibration()
    other = _section(write_report(tmp_path, plain).read_text(encoding="utf-8"), "decisions")
    assert "data-defect=" not in other and "No defect types" in other


def test_pr_curve_titles_show_sklearn_average_precision(tmp_path: Path, monkeypatch) -> None:
    data = decision_data(tmp_path)
    del data.metrics["classes"]["cable"]  # a class the table lacks: computed the same way
    seen: dict = {}
    real = plots.pr_figure
    monkeypatch.setattr(plots, "pr_figure", lambda curves: seen.update(curves) or real(curves))
    write_report(tmp_path, data)
    assert set(seen) == set(CLASSES)
    for name in CLASSES:
        sel = np.asarray(data.classes) == name
        expected = average_precision_score(np.asarray(data.labels)[sel], np.asarray(data.scores)[sel])
        assert seen[name]["title"] == f"{name}\nAP {100 * expected:.1f}"
        recall, precision = seen[name]["curve"]
        assert recall[0] == 0 and recall[-1] == 1 and np.all(np.diff(recall) >= 0)
        assert np.sum(np.diff(recall) * precision[1:]) == pytest.approx(expected)  # the drawn steps are the AP


def _recorder(seen: dict, key: str):
    """A stand-in for a plots function that keeps the curves it is given."""

    def record(curves: dict, *rest) -> bytes:
        seen.setdefault(key, {}).update(curves)
        return b"png"

    return record


def test_curve_titles_equal_the_table_values(tmp_path: Path, monkeypatch) -> None:
    data = decision_data(tmp_path)
    for k, name in enumerate(CLASSES):  # values no curve would recompute: titles must copy the table
        data.metrics["classes"][name].update(
            image_auroc=0.5011 + k / 10, image_ap=0.5122 + k / 10, pixel_auroc=0.5233 + k / 10, aupro=0.5344 + k / 10
        )
    seen: dict = {}
    for fn in ("roc_figure", "pr_figure", "pro_figure"):
        monkeypatch.setattr(plots, fn, _recorder(seen, fn))
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    for name in CLASSES:
        row = data.metrics["classes"][name]
        table = {k: f"{100 * row[k]:.1f}" for k in ("image_auroc", "image_ap", "pixel_auroc", "aupro")}
        assert all(f">{v}<" in page for v in table.values())
        assert (
            seen["roc_figure"][name]["title"]
            == f"{name}\nAUROC image {table['image_auroc']} · pixel {table['pixel_auroc']}"
        )
        assert seen["pr_figure"][name]["title"] == f"{name}\nAP {table['image_ap']}"
        assert seen["pro_figure"][name][2] == f"{name}\nAUPRO {table['aupro']}"


def _tiles(fragment: str) -> list[tuple[int, str]]:
    """(data-index, visible caption) of each tile in an html fragment, in order."""
    found = re.findall(
        r'<figure class="tile[^"]*" data-index="(\d+)">.*?<figcaption>(.*?)</figcaption>', fragment, re.S
    )
    return [(int(i), _text(caption)) for i, caption in found]


def test_mistakes_gallery_lists_top_scored_normals_with_captions(tmp_path: Path) -> None:
    data = decision_data(tmp_path, per_concept=False)
    section = _section(write_report(tmp_path, data).read_text(encoding="utf-8"), "mistakes")
    scores, labels = np.asarray(data.scores), np.asarray(data.labels)
    normals = sorted(np.flatnonzero(labels == 0), key=lambda i: -scores[i])[:6]
    defectives = sorted(np.flatnonzero(labels == 1), key=lambda i: scores[i])[:6]
    rows = re.findall(r'<div class="tiles" data-kind="(\w+)">(.*?)</div>', section, re.S)
    got = {kind: _tiles(body) for kind, body in rows}
    assert [i for i, _ in got["normals"]] == [int(i) for i in normals]
    assert [i for i, _ in got["defectives"]] == [int(i) for i in defectives]
    for i, caption in got["normals"] + got["defectives"]:
        verdict = "anomalous" if scores[i] > THRESHOLD else "normal"
        kind = data.paths[i].split("/")[-2]
        assert f"{data.classes[i]} · {kind}" in caption
        assert f"score {format_score(scores[i], THRESHOLD)} · threshold {format_score(THRESHOLD, scores[i])}" in caption
        assert f"verdict: {verdict}" in caption


def test_per_concept_thresholds_rank_mistakes_and_show_in_captions(built) -> None:
    data, page, _ = built
    thresholds, flagged = _expected_verdicts(data)
    margin = np.asarray(data.scores) - thresholds
    normals = sorted(np.flatnonzero(np.asarray(data.labels) == 0), key=lambda i: -margin[i])[:6]
    got = _tiles(re.search(r'data-kind="normals">(.*?)</div>', _section(page, "mistakes"), re.S).group(1))
    assert [i for i, _ in got] == [int(i) for i in normals]
    for i, caption in got:
        assert f"threshold {format_score(thresholds[i], data.scores[i])}" in caption
        assert f"verdict: {'anomalous' if flagged[i] else 'normal'}" in caption
    assert "own threshold" in _text(_section(page, "decisions"))


def test_verdict_rule_names_the_training_tail_floor_only_where_fit_applied_it(built, tmp_path: Path) -> None:
    """The page states the rule the thresholds were made with: a checkpoint calibrated before the
    floor (tail_images 0) or the fitted tail (tail_fit 0) is not described with them."""
    _, page, _ = built
    assert "training normals" in _text(_section(page, "decisions"))
    assert "at least" not in _text(_section(page, "decisions"))
    data = decision_data(tmp_path)
    data.calibration.tail_images = 20
    text = _text(_section(write_report(tmp_path, data).read_text(encoding="utf-8"), "decisions"))
    assert "A concept with at least 20 training normals keeps its threshold at or above" in text
    assert "exponential tail" not in text
    data.calibration.tail_fit = 5
    text = _text(_section(write_report(tmp_path, data).read_text(encoding="utf-8"), "decisions"))
    assert "read from an exponential tail fitted to the 5 highest" in text


def test_heatmap_tiles_carry_the_colour_bar(built) -> None:
    data, page, _ = built
    match = re.search(r'<figure class="tile[^"]*" data-index="(\d+)"><img src="([^"]+)"', _section(page, "galleries"))
    i, tile = int(match.group(1)), _decode(match.group(2))
    expected = with_colorbar(np.zeros((128, 128, 3), np.uint8), *MAP_RANGE)[:, 128:]  # 32 px enlarged to 128
    assert tile.shape == (128, 128 + expected.shape[1], 3)
    assert np.abs(tile[:, 128:].astype(int) - expected.astype(int)).mean() < 6  # JPEG noise only
    image = np.repeat(
        np.repeat(
            overlay(data.images(i), data.maps[i], data.masks[i] if data.masks[i].any() else None, *MAP_RANGE), 4, 0
        ),
        4,
        1,
    )
    assert np.abs(tile[:, :128].astype(int) - image.astype(int)).mean() < 6
    assert "colour bar" in _text(_section(page, "galleries"))


def test_page_reads_on_a_narrow_screen(built) -> None:
    _, page, _ = built
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert page.count("<table") == page.count('<div class="scroll"><table') >= 4
    css = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert re.search(r"\.scroll \{[^}]*overflow-x:auto", css)
    assert re.search(r"nav \{[^}]*flex-wrap:wrap", css)
    assert re.search(r"img\.plot \{[^}]*max-width:100%[^}]*height:auto", css)
    assert re.search(r"\.panels \{[^}]*grid-template-columns:repeat\(auto-fill, minmax\(min\(100%", css)  # plots wrap
    assert re.search(r"\.panels img \{[^}]*max-width:100%[^}]*height:auto", css)
    for block in re.findall(r'<div class="panels">(.*?)</div>', page, re.S):
        assert re.fullmatch(r'(<img class="(panel|plot)" src="data:image/png;base64,[^"]+" alt="[^"]+">)+', block)
    assert page.count('<div class="panels">') == 6  # roc, pr, pro, scores, training, usage
    fixed = [int(v) for v in re.findall(r"(?<![-\w])(?:min-)?width:\s*(\d+)px", css)]
    assert fixed and max(fixed) <= 420
    assert all('style="' not in tag for tag in re.findall(r"<[^>]+>", re.sub(r'src="[^"]*"', "", page)))


def test_training_section_from_the_log(built, tmp_path: Path) -> None:
    data, page, _ = built
    section = _section(page, "training")
    assert section.count('alt="training curve: ') == 3 and "1 unreadable line" in section
    assert "epochs 1–3" in _text(section) and "dotted line: the evaluated epoch" not in section  # no metrics["run"]
    log = read_train_log(data.train_log)
    assert log.epochs.tolist() == [1, 2, 3] and log.loss.tolist() == [9.0, 4.0, 3.0] and log.skipped == 1
    assert log.val_nll[0] == 5.0 and np.isnan(log.val_nll[1:]).all()
    assert log.usage["cpc"][0].tolist() == [8, 6, 5] and log.usage["cpc"][1].tolist() == [8, 8, 8]
    data.train_log = tmp_path / "missing.jsonl"
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    assert "No readable training log" in _section(page, "training") and 'alt="training curve' not in page


def test_concept_purity_matches_brute_force(built) -> None:
    data, page, _ = built
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


def test_save_image_round_trips(tmp_path: Path) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    path = save_image(array, tmp_path / "sub" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), array)
    with pytest.raises(VQFlowError):
        save_image(array.astype(np.float32), tmp_path / "y.png")
    with pytest.raises(VQFlowError, match="must end in"):
        save_image(array, tmp_path / "y.gif")


def test_save_image_writes_jpeg_by_suffix_close_to_the_pixels(tmp_path: Path) -> None:
    smooth = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3).astype(np.uint8)  # JPEG-friendly content
    path = save_image(smooth, tmp_path / "x.jpg")
    img = Image.open(path)
    assert img.format == "JPEG" and img.size == (64, 64)
    assert np.abs(np.asarray(img).astype(int) - smooth).mean() < 3


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


def test_report_without_masks_concepts_calibration_or_log(tmp_path: Path) -> None:
    data = make_data(with_masks=False, with_concepts=False)
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    for src in _img_sources(page):
        assert _decode(src).size > 0
    assert "PRO curves per class" not in page and "class by concept heatmap" not in page
    assert "—" in page  # pixel metrics shown as missing
    assert "No calibrated threshold" in _section(page, "decisions") and "data-threshold" not in page
    assert "verdict:" not in page and "No readable training log" in page
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
    data.calibration = _calibration()
    images = data.images
    data.images = lambda i: images(keep[i])
    data.metrics = {"classes": {"bottle": {k: None for k in KEYS}}, "mean": {k: None for k in KEYS}}
    data.code_usage = {}
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    for src in _img_sources(page):
        assert _decode(src).size > 0
    assert "bottle" in page and "No defective test images" in page
    assert _row_cells(_section(page, "decisions"), **{"class": "bottle"})[-1] == "—"  # miss rate of 0 defectives


def test_mismatched_lengths_raise(tmp_path: Path) -> None:
    data = make_data()
    data.scores = data.scores[:-1]
    with pytest.raises(VQFlowError, match="scores"):
        write_report(tmp_path, data)


def test_report_is_deterministic(tmp_path: Path) -> None:
    a = write_report(tmp_path / "a", decision_data(tmp_path)).read_bytes()
    b = write_report(tmp_path / "b", decision_data(tmp_path)).read_bytes()
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


def test_format_decisions_counts_flagged_normals_and_caught_defects_per_class() -> None:
    from vqflow.report import format_decisions

    decisions = {
        "classes": {
            "brick": {"normal": 12, "false_alarms": 1, "defective": 12, "missed": 4},
            "good_only": {"normal": 5, "false_alarms": 0, "defective": 0, "missed": 0},
        }
    }
    lines = format_decisions(decisions).splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert rows["brick"] == ["1/12", "8/12"] and rows["good_only"] == ["0/5", "-"]
    assert rows["total"] == ["1/17", "(5.9%)", "8/12", "(66.7%)"]
    assert format_decisions(None) == "" and format_decisions({"classes": {}}) == ""
