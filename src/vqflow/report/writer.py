"""write_report: report.html of one evaluation, one file with its images embedded.

Images are embedded as data: URIs, so the html opens alone wherever it is copied. Only a
report whose images would exceed EMBED_LIMIT writes them to report_files/ instead, and then
says at its top that the folder must travel with it.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from vqflow import __version__
from vqflow.atomic import atomic_write_text
from vqflow.report.assets import EMBED_LIMIT, FILES_DIR, Assets
from vqflow.report.data import ReportData, check_report_data
from vqflow.report.decisions import (
    Decisions,
    catch_table_html,
    class_indices,
    class_outcomes,
    decide,
    defect_catches,
    format_rate,
    format_score,
    outcome_table_html,
    rule_text,
)
from vqflow.report.gallery import Tiles, class_gallery, mistakes_gallery
from vqflow.report.sections import (
    concept_section,
    curves_section,
    histogram_section,
    training_section,
    usage_section,
)
from vqflow.report.style import CSS
from vqflow.report.tables import format_percent, metrics_table_html, summary_value

GALLERY_PER_SIDE = 4
MISTAKES_PER_SIDE = 6
NAV = [
    ("metrics", "Metrics"),
    ("decisions", "Decisions"),
    ("curves", "Curves"),
    ("scores", "Scores"),
    ("mistakes", "Mistakes"),
    ("galleries", "Galleries"),
    ("training", "Training"),
    ("concepts", "Concepts"),
    ("codebooks", "Codebooks"),
]


def _cards(cards: list[tuple[str, str, str]]) -> str:
    """Big-number cards: (extra css class, value, label)."""
    body = "".join(
        f'<div class="{" ".join(["card", c]).strip()}"><div class="v">{v}</div><div class="k">{k}</div></div>'
        for c, v, k in cards
    )
    return f'<div class="cards">{body}</div>'


def _summary_cards(metrics: dict) -> str:
    means = metrics.get("mean") or {}
    cards = [("main", format_percent(summary_value(metrics)), "overall (mean of the metrics)")]
    for key, label in (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro", "AUPRO")):
        if key == "image_auroc" or format_percent(means.get(key)) != "—":  # no empty pixel cards
            cards.append(("", format_percent(means.get(key)), f"mean {label}"))
    return _cards(cards)


def _metrics_section(metrics: dict) -> str:
    return (
        '<section id="metrics"><h2>Metrics</h2>'
        + _summary_cards(metrics)
        + f'<div class="scroll">{metrics_table_html(metrics)}</div>'
        '<p class="caption">Threshold-free ranking metrics, percent, one decimal; — where a metric does not apply '
        "(no masks, or no anomalies in the class). AUPRO integrates to FPR 0.3 and is divided by 0.3.</p></section>"
    )


def _decisions_section(data: ReportData, groups: dict[str, np.ndarray], d: Decisions | None) -> str:
    """Outcomes of the calibrated verdicts: false alarms and missed defects per class and defect type."""
    out = ['<section id="decisions"><h2>Decisions at the working threshold</h2>']
    if d is None:
        out.append(
            '<p class="note">No calibrated threshold for this model (a fit that did not finish has none): '
            "no verdicts, only the threshold-free metrics.</p></section>"
        )
        return "".join(out)
    rows = class_outcomes(groups, data.labels, d)
    total = rows[-1]
    out.append(
        _cards(
            [
                ("main", format_score(d.global_threshold), "working threshold (global)"),
                (
                    "",
                    f"{total.false_alarms} / {total.normal}",
                    f"false alarms ({format_rate(total.false_alarms, total.normal)})",
                ),
                (
                    "",
                    f"{total.missed} / {total.defective}",
                    f"missed defects ({format_rate(total.missed, total.defective)})",
                ),
            ]
        )
    )
    out.append(f'<p class="caption">{rule_text(d)}</p>')
    out.append(f'<div class="scroll">{outcome_table_html(rows)}</div>')
    out.append(
        '<p class="caption">False alarm: a normal test image flagged anomalous. Missed defect: a defective test '
        "image judged normal. Rates are of the class's normal (defective) test images.</p>"
    )
    catches = defect_catches(list(data.classes), list(data.paths), data.labels, d)
    if catches:
        out.append("<h3>Catch rate per defect type</h3>")
        out.append(f'<div class="scroll">{catch_table_html(catches)}</div>')
        out.append(
            '<p class="caption">Defective test images flagged anomalous, by their folder test/&lt;defect&gt;/.</p>'
        )
    else:
        out.append('<p class="note">No defect types (test/&lt;defect&gt;/ folders) in this test set.</p>')
    out.append("</section>")
    return "".join(out)


def _mistakes_section(tiles: Tiles) -> str:
    return (
        '<section id="mistakes"><h2>Worst mistakes</h2><p class="caption">Over all classes: the normal images '
        "scored furthest above their threshold and the defective images scored furthest below it (with one "
        "global threshold: the highest- and lowest-scored). Heatmap with colour bar (map score); ground-truth "
        f"outline in white.</p>{mistakes_gallery(tiles, MISTAKES_PER_SIDE)}</section>"
    )


def _galleries_section(data: ReportData, groups: dict[str, np.ndarray], tiles: Tiles) -> str:
    galleries = "".join(
        class_gallery(tiles, name, k, idx, GALLERY_PER_SIDE) for k, (name, idx) in enumerate(groups.items())
    )
    note = (
        "Heatmap over the image (turbo: blue low, red high; the colour bar gives the map score), ground-truth "
        + (
            "outline in white; colour range fixed at fit, as in vqflow predict."
            if data.map_range is not None
            else "outline in white; colour range shared within each class."
        )
        if data.maps is not None
        else "No anomaly maps for this dataset: plain images shown."
    )
    return (
        '<section id="galleries"><h2>Highest- and lowest-scored test images</h2><p class="caption">'
        f"{note} Top border: red = anomalous, green = normal (ground truth).</p>{galleries}</section>"
    )


def _notes_section(notes: list[str]) -> str:
    if not notes:
        return ""
    items = "".join(f"<li>{html.escape(str(line))}</li>" for line in notes)
    return f'<section id="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>'


def _nav(with_notes: bool) -> str:
    links = NAV + ([("notes", "Notes")] if with_notes else [])
    return "<nav>" + "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in links) + "</nav>"


def write_report(out_dir: Path, data: ReportData, embed: bool | None = None) -> Path:
    """Write out_dir/report.html and return its path.

    `embed` True: images inside the html (data: URIs); False: in out_dir/report_files/ with a
    notice at the top; None: embedded unless they exceed EMBED_LIMIT. The html is written to a
    temporary name and renamed at the end, so a reader never sees half a report.
    """
    n = check_report_data(data)
    out_dir = Path(out_dir)
    groups = class_indices(list(data.classes))
    title = html.escape(data.title)
    assets = Assets()
    decisions = decide(data.calibration, data.scores, data.concepts)
    tiles = Tiles(data, assets, decisions)
    sections = [
        _metrics_section(data.metrics),
        _decisions_section(data, groups, decisions),
        curves_section(data, groups, assets, decisions),
        histogram_section(data, groups, assets, decisions),
        _mistakes_section(tiles),
        _galleries_section(data, groups, tiles),
        training_section(data, assets),
        concept_section(data, assets),
        usage_section(data, assets),
        _notes_section(list(data.notes)),
    ]
    if embed is None:
        embed = assets.embedded_size() <= EMBED_LIMIT
    notice = (
        ""
        if embed
        else f'<p class="notice">This report shows its images from the folder <b>{FILES_DIR}/</b> beside it: '
        f"keep report.html and {FILES_DIR}/ together when you copy, move or send it.</p>"
    )
    footer = "one self-contained file: images embedded, no external resources" if embed else "no external resources"
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title} · vqflow report</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head><body>'
        f'<header><h1>{title}</h1><div class="sub">vqflow {__version__} evaluation report · {n} test images · '
        f"{len(groups)} classes</div></header>{_nav(bool(data.notes))}{notice}<main>{''.join(sections)}</main>"
        f"<footer>generated by vqflow · {footer}</footer></body></html>\n"
    )
    target = out_dir / "report.html"
    atomic_write_text(target, assets.resolve(page, out_dir, embed))
    return target
