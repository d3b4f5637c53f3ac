"""The per-class metrics table, as terminal text and as HTML, with the one-number summary; the verdicts as text."""

from __future__ import annotations

import html
import math

from vqflow.report.decisions import format_rate

METRIC_COLUMNS: list[tuple[str, str]] = [
    ("image_auroc", "I-AUROC"),
    ("image_ap", "I-AP"),
    ("image_f1max", "I-F1"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_f1max", "P-F1"),
    ("aupro", "AUPRO"),
]


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_percent(value: float | None, missing: str = "—") -> str:
    """A metric in [0, 1] as a percent with one decimal; `missing` for None or NaN."""
    return missing if _is_missing(value) else f"{100.0 * float(value):.1f}"


def summary_value(metrics: dict) -> float | None:
    """The one-number summary: metrics["mean_all"], else the mean of the available means."""
    if not _is_missing(metrics.get("mean_all")):
        return float(metrics["mean_all"])
    means = metrics.get("mean") or {}
    values = [float(means[k]) for k, _ in METRIC_COLUMNS if not _is_missing(means.get(k))]
    return sum(values) / len(values) if values else None


def table_rows(metrics: dict, missing: str) -> list[list[str]]:
    """Rows [name, seven formatted values] per class, then the mean row."""
    rows = []
    for name, values in (metrics.get("classes") or {}).items():
        rows.append([str(name)] + [format_percent((values or {}).get(k), missing) for k, _ in METRIC_COLUMNS])
    means = metrics.get("mean") or {}
    rows.append(["mean"] + [format_percent(means.get(k), missing) for k, _ in METRIC_COLUMNS])
    return rows


def format_table(metrics: dict) -> str:
    """Fixed-width text table for the terminal: one row per class, a rule, the mean row."""
    rows = table_rows(metrics, missing="-")
    headers = ["class"] + [label for _, label in METRIC_COLUMNS]
    name_width = max(len(r[0]) for r in rows + [headers])
    widths = [name_width] + [max(7, len(h)) for h in headers[1:]]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

    rule = "-" * len(line(headers))
    out = [line(headers), rule] + [line(r) for r in rows[:-1]] + [rule, line(rows[-1])]
    summary = summary_value(metrics)
    if summary is not None:
        out.append(f"overall (mean of the available metrics): {format_percent(summary)}")
    return "\n".join(out)


def format_decisions(decisions: dict | None) -> str:
    """The verdicts at the calibrated thresholds (metrics.json "decisions") as terminal text: per class,
    normal images flagged and defective images caught, then the total row, named as in the report;
    "" without decisions."""
    if not decisions or not decisions.get("classes"):
        return ""
    rows = [["class", "normals flagged", "defects caught"]]
    totals = [0, 0, 0, 0]  # flagged, normal, caught, defective
    for name, c in decisions["classes"].items():
        flagged, normal = int(c.get("false_alarms", 0)), int(c.get("normal", 0))
        defective = int(c.get("defective", 0))
        caught = defective - int(c.get("missed", 0))
        rows.append(
            [str(name), f"{flagged}/{normal}" if normal else "-", f"{caught}/{defective}" if defective else "-"]
        )
        totals = [totals[0] + flagged, totals[1] + normal, totals[2] + caught, totals[3] + defective]

    def share(k: int, n: int) -> str:
        return f"{k}/{n} ({format_rate(k, n)})" if n else "-"

    rows.append(["total", share(totals[0], totals[1]), share(totals[2], totals[3])])
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]) for r in rows]
    return "\n".join(["verdicts at the calibrated thresholds (what vqflow predict applies):", *lines])


def metrics_table_html(metrics: dict) -> str:
    """The same table as an HTML <table> (percent, 1 decimal, "—" for missing)."""
    rows = table_rows(metrics, missing="—")
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in METRIC_COLUMNS)
    body = []
    for i, row in enumerate(rows):
        is_mean = i == len(rows) - 1
        cells = "".join(f'<td class="num{" na" if c == "—" else ""}">{c}</td>' for c in row[1:])
        tag = ' class="mean"' if is_mean else ""
        body.append(f'<tr{tag}><th scope="row">{html.escape(row[0])}</th>{cells}</tr>')
    return (
        '<table class="metrics"><thead><tr><th>class</th>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )
