"""write_report: the self-contained report.html (plus its PNGs) for one evaluation."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from sklearn.metrics import auc, roc_curve

from vqflow import __version__
from vqflow.atomic import atomic_write_text
from vqflow.report import plots
from vqflow.report.concepts import concept_table, usage_stats
from vqflow.report.curves import PIXEL_SAMPLE, PRO_FPR_LIMIT, pixel_roc, pro_curve
from vqflow.report.data import ReportData, check_report_data
from vqflow.report.gallery import class_gallery
from vqflow.report.style import CSS
from vqflow.report.tables import format_percent, metrics_table_html, summary_value

FILES_DIR = "report_files"
GALLERY_PER_SIDE = 4


def _class_indices(classes: list[str]) -> dict[str, np.ndarray]:
    """Positions of each class's images, classes in order of first appearance."""
    names = list(dict.fromkeys(classes))
    array = np.asarray(classes, dtype=object)
    return {name: np.flatnonzero(array == name) for name in names}


def _img(rel: str, alt: str) -> str:
    return f'<img class="plot" src="{rel}" alt="{html.escape(alt)}">'


def _summary_cards(metrics: dict) -> str:
    means = metrics.get("mean") or {}
    cards = [("main", format_percent(summary_value(metrics)), "overall (mean of the metrics)")]
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")):
        if key == "image_auroc" or format_percent(means.get(key)) != "—":  # no empty pixel cards
            cards.append(("", format_percent(means.get(key)), f"mean {label}"))
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card {cls}"><div class="v">{v}</div><div class="k">{k}</div></div>' for cls, v, k in cards
        )
        + "</div>"
    )


def _curves_section(data: ReportData, groups: dict[str, np.ndarray], files: Path) -> str:
    labels = np.asarray(data.labels).astype(int)
    scores = np.asarray(data.scores, dtype=np.float64)
    has_masks = data.masks is not None and data.maps is not None
    rocs, pros = {}, {}
    pro_source = ""
    for name, idx in groups.items():
        image = pixel = None
        parts = [name]
        if 0 < labels[idx].sum() < idx.size:
            fpr, tpr, _ = roc_curve(labels[idx], scores[idx])
            image = (fpr, tpr)
            parts.append(f"image {100 * auc(fpr, tpr):.1f}")
        if has_masks:
            fpr, tpr = pixel_roc(data.masks[idx], data.maps[idx])
            if fpr.size:
                pixel = (fpr, tpr)
                parts.append(f"pixel {100 * auc(fpr, tpr):.1f}")
            if data.masks[idx].any():
                pfpr, ppro, pro_source = pro_curve(data.masks[idx], data.maps[idx])
                pros[name] = (pfpr, ppro, name)
        rocs[name] = {"image": image, "pixel": pixel, "title": "\n".join([parts[0], " · ".join(parts[1:])])}
    heading = "ROC and PRO curves" if pros else "ROC curves"
    out = [f'<section id="curves"><h2>{heading}</h2>']
    plots.roc_figure(rocs, files / "roc.png")
    out.append(_img(f"{FILES_DIR}/roc.png", "ROC curves per class"))
    caption = "Image-level ROC per class (solid; AUROC in the title)."
    if has_masks:
        caption += f" Pixel ROC dashed, on at most {PIXEL_SAMPLE:,} pixels per class drawn with a fixed seed."
    out.append(f'<p class="caption">{caption}</p>')
    if pros:
        plots.pro_figure(pros, PRO_FPR_LIMIT, files / "pro.png")
        out.append(_img(f"{FILES_DIR}/pro.png", "PRO curves per class"))
        out.append(
            f'<p class="caption">Per-region overlap vs. pixel FPR up to {PRO_FPR_LIMIT} (the AUPRO range); '
            f"source: {html.escape(pro_source)}.</p>"
        )
    elif not has_masks:
        out.append('<p class="note">No ground-truth masks: pixel ROC and PRO curves are not available.</p>')
    out.append("</section>")
    return "".join(out)


def _histogram_section(data: ReportData, groups: dict[str, np.ndarray], files: Path) -> str:
    labels = np.asarray(data.labels).astype(int)
    scores = np.asarray(data.scores, dtype=np.float64)
    split = {n: (scores[i][labels[i] == 0], scores[i][labels[i] == 1]) for n, i in groups.items()}
    plots.histogram_figure(split, files / "scores.png")
    return (
        '<section id="scores"><h2>Image score distributions</h2>'
        + _img(f"{FILES_DIR}/scores.png", "score histograms per class")
        + '<p class="caption">Normal (blue) vs anomalous (red) test images per class; '
        "the less the two overlap, the better one threshold separates them.</p></section>"
    )


def _concept_section(data: ReportData, files: Path) -> str:
    out = ['<section id="concepts"><h2>Concepts (CPC)</h2>']
    if data.concepts is None:
        out.append('<p class="note">No concept assignments were recorded for this run.</p></section>')
        return "".join(out)
    table = concept_table(list(data.classes), np.asarray(data.concepts))
    out.append(
        f'<div class="cards"><div class="card main"><div class="v">{100 * table.purity:.1f}</div>'
        '<div class="k">concept purity (%)</div></div>'
        f'<div class="card"><div class="v">{len(table.concept_ids)}</div><div class="k">concepts used</div></div></div>'
    )
    head = "".join(f"<th>{c}</th>" for c in table.concept_ids)
    rows = []
    for name, counts in zip(table.class_names, table.counts):
        cells = "".join('<td class="zero">·</td>' if v == 0 else f"<td>{v}</td>" for v in counts)
        rows.append(f'<tr><th scope="row">{html.escape(name)}</th>{cells}</tr>')
    out.append(
        '<div class="scroll"><table class="concepts"><thead><tr><th>class \\ concept</th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table></div>"
    )
    out.append(
        '<p class="caption">Test images of each true class per assigned CPC concept (used concepts only). '
        "Purity = sum over concepts of the largest class count, divided by the number of images.</p>"
    )
    plots.concept_heatmap(table, files / "concepts.png")
    out.append(_img(f"{FILES_DIR}/concepts.png", "class by concept heatmap"))
    out.append("</section>")
    return "".join(out)


def _usage_section(data: ReportData, files: Path) -> str:
    out = ['<section id="codebooks"><h2>Codebook usage</h2>']
    if not data.code_usage:
        out.append('<p class="note">No codebook usage was recorded for this run.</p></section>')
        return "".join(out)
    rows = []
    for level, counts in data.code_usage.items():
        s = usage_stats(counts)
        ppl = "—" if np.isnan(s.perplexity) else f"{s.perplexity:.1f}"
        rows.append(
            f'<tr><th scope="row">{html.escape(level)}</th><td class="num">{s.used}</td>'
            f'<td class="num">{s.size}</td><td class="num">{ppl}</td></tr>'
        )
    out.append(
        "<table><thead><tr><th>level</th><th>used codes</th><th>codebook size</th><th>perplexity</th>"
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )
    plots.usage_figure(data.code_usage, files / "usage.png")
    out.append(_img(f"{FILES_DIR}/usage.png", "codebook usage per level"))
    out.append(
        '<p class="caption">Usage counts per code, sorted. Perplexity = exp(entropy of the usage '
        "distribution): 1 means one code does everything, the codebook size means uniform use.</p></section>"
    )
    return "".join(out)


def _notes_section(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(str(line))}</li>" for line in notes)
    return f'<section id="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>'


def write_report(out_dir: Path, data: ReportData) -> Path:
    """Write out_dir/report.html and its PNGs in out_dir/report_files/; return the html path.

    Images are referenced relatively (report_files/...), not embedded. The html is written
    to a temporary name and renamed at the end, so a reader never sees half a report.
    """
    n = check_report_data(data)
    out_dir = Path(out_dir)
    files = out_dir / FILES_DIR
    files.mkdir(parents=True, exist_ok=True)
    groups = _class_indices(list(data.classes))
    title = html.escape(data.title)

    galleries = "".join(
        class_gallery(name, k, idx, data, files, FILES_DIR, GALLERY_PER_SIDE)
        for k, (name, idx) in enumerate(groups.items())
    )
    gallery_note = (
        "Heatmap over the image (turbo: blue low, red high), ground-truth outline in white; "
        "colour range shared within each class."
        if data.maps is not None
        else "No anomaly maps for this dataset: plain images shown."
    )
    body = [
        f'<header><h1>{title}</h1><div class="sub">vqflow {__version__} evaluation report · {n} test images · '
        f"{len(groups)} classes</div></header>",
        '<nav><a href="#metrics">Metrics</a><a href="#curves">Curves</a><a href="#scores">Scores</a>'
        '<a href="#galleries">Galleries</a><a href="#concepts">Concepts</a><a href="#codebooks">Codebooks</a>'
        + ('<a href="#notes">Notes</a>' if data.notes else "")
        + "</nav><main>",
        '<section id="metrics"><h2>Metrics</h2>'
        + _summary_cards(data.metrics)
        + '<div class="scroll">'
        + metrics_table_html(data.metrics)
        + "</div>"
        '<p class="caption">Percent, one decimal; — where a metric does not apply (no masks, or no '
        "anomalies in the class). AUPRO integrates to FPR 0.3 and is divided by 0.3.</p></section>",
        _curves_section(data, groups, files),
        _histogram_section(data, groups, files),
        f'<section id="galleries"><h2>Highest- and lowest-scored test images</h2><p class="caption">'
        f"{gallery_note} Top border: red = anomalous, "
        f"green = normal (ground truth).</p>{galleries}</section>",
        _concept_section(data, files),
        _usage_section(data, files),
        _notes_section(list(data.notes)),
        "</main><footer>generated by vqflow · self-contained: no external resources</footer>",
    ]
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title} · vqflow report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{''.join(body)}</body></html>\n"
    )
    target = out_dir / "report.html"
    atomic_write_text(target, page)
    return target
