"""The report's figure sections: curves, score histograms, training, concepts and codebooks (HTML).

Every number printed in a curve title is the metrics table's value (vqflow.metrics, exact or
binned as metrics.json holds it), formatted the same way, so title and table always agree.
"""

from __future__ import annotations

import html
from collections.abc import Callable

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from vqflow import metrics as vqmetrics
from vqflow.report import plots
from vqflow.report.assets import Assets
from vqflow.report.concepts import concept_table, usage_stats
from vqflow.report.curves import PIXEL_SAMPLE, PRO_FPR_LIMIT, pixel_roc, pro_curve, thin_curve
from vqflow.report.data import ReportData
from vqflow.report.decisions import Decisions, format_score
from vqflow.report.tables import format_percent
from vqflow.report.training import read_train_log


def img(src: str, alt: str) -> str:
    """A plot image that shrinks with the page."""
    return f'<img class="plot" src="{src}" alt="{html.escape(alt)}">'


def panels(assets: Assets, stem: str, alt: str, specs: dict, draw: Callable[[dict, bool], bytes]) -> str:
    """One image per class (or level), in a grid that wraps: side by side on a wide screen,
    stacked on a phone, each readable at its own size. `draw(specs, legend)` makes one PNG."""
    cells = []
    for k, (name, spec) in enumerate(specs.items()):
        src = assets.src(f"{stem}_{k:03d}.png", draw({name: spec}, k == 0))
        cells.append(f'<img class="panel" src="{src}" alt="{html.escape(f"{alt}: {name}")}">')
    return f'<div class="panels">{"".join(cells)}</div>'


def metric_text(data: ReportData, name: str, key: str) -> str:
    """A class's metric as the metrics table prints it; image metrics of a class the table lacks
    are computed the way the table's are (vqflow.metrics)."""
    row = (data.metrics.get("classes") or {}).get(name)
    if row is not None:
        return format_percent(row.get(key))
    if key not in ("image_auroc", "image_ap"):
        return "—"
    idx = np.asarray(data.classes, dtype=object) == name
    labels = np.asarray(data.labels).astype(int)[idx]
    scores = np.asarray(data.scores, dtype=np.float64)[idx]
    return format_percent(getattr(vqmetrics, key)(labels, scores) if 0 < labels.sum() < labels.size else None)


def _points(labels: np.ndarray, flagged: np.ndarray | None) -> tuple[tuple | None, tuple | None]:
    """The working threshold's (FPR, TPR) and (recall, precision) for one class, or None."""
    if flagged is None or not 0 < labels.sum() < labels.size:
        return None, None
    tp = int((flagged & (labels == 1)).sum())
    fp = int((flagged & (labels == 0)).sum())
    tpr = tp / int(labels.sum())
    roc = (fp / int((labels == 0).sum()), tpr)
    return roc, ((tpr, tp / (tp + fp)) if tp + fp else None)


def _class_curves(data: ReportData, name: str, idx: np.ndarray, d: Decisions | None) -> tuple[dict, dict]:
    """ROC and PR panel specs of one class (curves, titles from the metrics table, threshold points)."""
    labels = np.asarray(data.labels).astype(int)[idx]
    scores = np.asarray(data.scores, dtype=np.float64)[idx]
    roc_point, pr_point = _points(labels, None if d is None else d.flagged[idx])
    image = pr = pixel = None
    parts = []
    if 0 < labels.sum() < labels.size:
        fpr, tpr, _ = roc_curve(labels, scores)
        image = thin_curve(fpr, tpr)
        parts.append(f"image {metric_text(data, name, 'image_auroc')}")
        precision, recall, _ = precision_recall_curve(labels, scores)
        pr = thin_curve(recall[::-1], precision[::-1])
    if data.masks is not None and data.maps is not None:
        fpr, tpr = pixel_roc(data.masks[idx], data.maps[idx])
        if fpr.size:
            pixel = (fpr, tpr)
            parts.append(f"pixel {metric_text(data, name, 'pixel_auroc')}")
    title = f"{name}\nAUROC " + " · ".join(parts) if parts else name
    roc = {"image": image, "pixel": pixel, "point": roc_point, "title": title}
    pr_spec = {
        "curve": pr,
        "point": pr_point,
        "prevalence": float(labels.mean()) if labels.size else 0.0,
        "title": f"{name}\nAP {metric_text(data, name, 'image_ap')}",
    }
    return roc, pr_spec


def curves_section(data: ReportData, groups: dict[str, np.ndarray], assets: Assets, d: Decisions | None) -> str:
    """ROC, precision-recall and (with masks) PRO curves per class."""
    has_masks = data.masks is not None and data.maps is not None
    rocs, prs, pros = {}, {}, {}
    pro_source = ""
    for name, idx in groups.items():
        rocs[name], prs[name] = _class_curves(data, name, idx, d)
        if has_masks and data.masks[idx].any():
            pfpr, ppro, pro_source = pro_curve(data.masks[idx], data.maps[idx])
            pros[name] = (pfpr, ppro, f"{name}\nAUPRO {metric_text(data, name, 'aupro')}")
    heading = "ROC, precision-recall and PRO curves" if pros else "ROC and precision-recall curves"
    point = " The dot marks the working threshold's verdicts." if d is not None else ""
    caption = f"Image-level ROC per class (solid).{point} Numbers in the titles are the metrics table's."
    if has_masks:
        caption += f" Pixel ROC dashed, drawn on at most {PIXEL_SAMPLE:,} pixels per class (fixed seed)."
    out = [
        f'<section id="curves"><h2>{heading}</h2>',
        panels(assets, "roc", "ROC curves", rocs, plots.roc_figure),
        f'<p class="caption">{caption}</p>',
        panels(assets, "pr", "precision-recall curves", prs, lambda c, _: plots.pr_figure(c)),
        '<p class="caption">Image-level precision (share of flagged images that are defective) against recall '
        f"(share of defective images flagged), per class; AP in the title; grey line: the share of defective "
        f"images (a random ranking).{point}</p>",
    ]
    if pros:
        out.append(panels(assets, "pro", "PRO curves", pros, lambda c, _: plots.pro_figure(c, PRO_FPR_LIMIT)))
        out.append(
            f'<p class="caption">Per-region overlap vs. pixel FPR up to {PRO_FPR_LIMIT} (the AUPRO range; '
            f"AUPRO from the metrics table in the title); curve source: {html.escape(pro_source)}.</p>"
        )
    elif not has_masks:
        out.append('<p class="note">No ground-truth masks: pixel ROC and PRO curves are not available.</p>')
    out.append("</section>")
    return "".join(out)


def histogram_section(data: ReportData, groups: dict[str, np.ndarray], assets: Assets, d: Decisions | None) -> str:
    """Per-class score histograms with the working threshold drawn in."""
    labels = np.asarray(data.labels).astype(int)
    scores = np.asarray(data.scores, dtype=np.float64)
    specs = {}
    for name, idx in groups.items():
        own = () if d is None else tuple(sorted({float(t) for t in d.thresholds[idx]} - {d.global_threshold}))
        specs[name] = plots.HistogramPanel(
            scores[idx][labels[idx] == 0],
            scores[idx][labels[idx] == 1],
            None if d is None else d.global_threshold,
            own,
        )
    if d is None:
        attr, line = "", " No calibrated threshold for this model: no threshold to draw."
    else:
        attr = f' data-threshold="{d.global_threshold!r}"'
        line = (
            f" Dashed line: the working threshold <b>{format_score(d.global_threshold)}</b>; images scored above "
            "it are flagged anomalous."
        )
        if d.per_concept:
            line += " Orange ticks at the top: per-concept thresholds used by some of the class's images instead."
    return (
        f'<section id="scores"{attr}><h2>Image score distributions</h2>'
        + panels(assets, "scores", "score histogram", specs, plots.histogram_figure)
        + '<p class="caption">Normal (blue) vs anomalous (red) test images per class; the less the two overlap, '
        f"the better one threshold separates them.{line}</p></section>"
    )


def training_section(data: ReportData, assets: Assets) -> str:
    """Loss, validation NLL and code usage per epoch from train_log.jsonl (a note if it is missing)."""
    out = ['<section id="training"><h2>Training</h2>']
    log = read_train_log(data.train_log)
    if log is None:
        out.append('<p class="note">No readable training log (train_log.jsonl): training curves omitted.</p>')
        return "".join(out) + "</section>"
    chosen = (data.metrics.get("run") or {}).get("epoch")
    chosen = int(chosen) if isinstance(chosen, (int, float)) and not isinstance(chosen, bool) else None
    figures = [
        ("training loss", plots.curve_figure(log.epochs, log.loss, "training loss", chosen)),
        (
            "validation NLL",
            plots.curve_figure(
                log.epochs, log.val_nll, "validation NLL (held-out normals)", chosen, plots.ANOMALY_COLOUR
            ),
        ),
    ]
    if log.usage:
        figures.append(("codes in use", plots.code_use_figure(log, chosen)))
    cells = "".join(
        img(assets.src(f"training_{k}.png", png), f"training curve: {alt}") for k, (alt, png) in enumerate(figures)
    )
    out.append(f'<div class="panels">{cells}</div>')
    last = [f"epochs {log.epochs[0]}–{log.epochs[-1]}"]
    for label, values in (("loss", log.loss), ("validation NLL", log.val_nll)):
        if np.isfinite(values[-1]):
            last.append(f"last {label} {values[-1]:.4g}")
    marker = f"; dotted line: the evaluated epoch ({chosen})" if chosen is not None else ""
    skipped = f"; {log.skipped} unreadable line(s) of the log skipped" if log.skipped else ""
    out.append(
        f'<p class="caption">{html.escape(", ".join(last))}{marker}{skipped}. Codes in use: the share of each '
        "codebook's codes (size in brackets) picked at least once in the epoch.</p></section>"
    )
    return "".join(out)


def concept_section(data: ReportData, assets: Assets) -> str:
    """How test images of each class spread over the learned CPC concepts."""
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
    out.append(img(assets.src("concepts.png", plots.concept_heatmap(table)), "class by concept heatmap"))
    out.append("</section>")
    return "".join(out)


def usage_section(data: ReportData, assets: Assets) -> str:
    """Codes used, codebook size and perplexity per level on the test set."""
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
        '<div class="scroll"><table><thead><tr><th>level</th><th>used codes</th><th>codebook size</th>'
        "<th>perplexity</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>"
    )
    out.append(panels(assets, "usage", "codebook usage", data.code_usage, lambda c, _: plots.usage_figure(c)))
    out.append(
        '<p class="caption">Usage counts per code on the test set, sorted. Perplexity = exp(entropy of the usage '
        "distribution): 1 means one code does everything, the codebook size means uniform use.</p></section>"
    )
    return "".join(out)
