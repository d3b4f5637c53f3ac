"""Decisions at the working threshold: each test image's verdict, false alarms and missed defects.

The verdict rule is the run's Calibration, the one `vqflow predict` applies: an image is
anomalous when its score exceeds its threshold (its concept's own where fit calibrated one,
else the global one). Test labels never set a threshold here; they only count the outcomes.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vqflow.calibration import Calibration


@dataclass
class Decisions:
    """The calibrated verdict on every test image."""

    thresholds: np.ndarray  # (N,) float: the threshold each image was judged by
    flagged: np.ndarray  # (N,) bool: verdict "anomalous"
    calibration: Calibration

    @property
    def global_threshold(self) -> float:
        return float(self.calibration.threshold)

    @property
    def per_concept(self) -> bool:
        """Whether some image was judged by its concept's own threshold."""
        return bool(np.any(self.thresholds != self.global_threshold))


def decide(calibration: Calibration | None, scores: np.ndarray, concepts: np.ndarray | None) -> Decisions | None:
    """Each image's threshold and verdict by `calibration.verdict`; None without a calibrated threshold."""
    if calibration is None or not calibration.ready:
        return None
    scores = np.asarray(scores, dtype=np.float64)
    thresholds = np.empty(scores.size, dtype=np.float64)
    flagged = np.empty(scores.size, dtype=bool)
    for i, score in enumerate(scores.tolist()):
        if concepts is None:  # no concept known: the global threshold, as for an unknown concept
            threshold, verdict = calibration.verdict(score, 0, threshold=calibration.threshold)
        else:
            threshold, verdict = calibration.verdict(score, int(concepts[i]))
        thresholds[i], flagged[i] = threshold, verdict == "anomalous"
    return Decisions(thresholds, flagged, calibration)


def defect_type(path: str) -> str | None:
    """The defect folder of an MVTec-layout test image (…/test/<defect>/<file>), else None."""
    parts = [p for p in re.split(r"[\\/]+", str(path)) if p]
    return parts[-2] if len(parts) >= 3 and parts[-3] == "test" else None


def format_score(value: float, other: float | None = None) -> str:
    """A score with 4 significant digits, more where needed to tell it from `other` (its threshold)."""
    for digits in (4, 6, 8, 12, 17):
        text = _significant(value, digits)
        if other is None or value == other or text != _significant(other, digits):
            return text
    return text


def _significant(value: float, digits: int) -> str:
    """`digits` significant digits, trailing zeros kept (1.000, not 1), no dangling point."""
    return f"{value:#.{digits}g}".rstrip(".").replace(".e", "e")


def format_rate(count: int, total: int) -> str:
    """count/total as a percent with one decimal; — when total is 0."""
    return f"{100.0 * count / total:.1f}%" if total else "—"


@dataclass
class Outcome:
    """One row of the decision table: false alarms among normals, misses among defectives."""

    name: str
    normal: int
    false_alarms: int
    defective: int
    missed: int
    thresholds: tuple[float, ...]  # distinct thresholds the row's images were judged by


def class_indices(classes: list[str]) -> dict[str, np.ndarray]:
    """Positions of each class's images, classes in order of first appearance."""
    names = list(dict.fromkeys(classes))
    array = np.asarray(classes, dtype=object)
    return {name: np.flatnonzero(array == name) for name in names}


def class_outcomes(groups: dict[str, np.ndarray], labels: np.ndarray, d: Decisions) -> list[Outcome]:
    """One Outcome per class (groups: class -> image positions), then the total row."""
    labels = np.asarray(labels).astype(int)
    rows = [_outcome(name, labels[idx], d.flagged[idx], d.thresholds[idx]) for name, idx in groups.items()]
    rows.append(_outcome("total", labels, d.flagged, d.thresholds))
    return rows


def _outcome(name: str, labels: np.ndarray, flagged: np.ndarray, thresholds: np.ndarray) -> Outcome:
    normal, defective = labels == 0, labels == 1
    return Outcome(
        name,
        int(normal.sum()),
        int((normal & flagged).sum()),
        int(defective.sum()),
        int((defective & ~flagged).sum()),
        tuple(float(t) for t in np.unique(thresholds)),
    )


def decision_summary(classes: list[str], labels: np.ndarray, d: Decisions) -> dict:
    """The verdicts' counts for metrics.json: per class normals, false alarms, defective images
    and misses at the working threshold, and the rates over all images and of the worst class."""
    rows = class_outcomes(class_indices(classes), labels, d)
    per_class, total = rows[:-1], rows[-1]
    return {
        "threshold": d.global_threshold,
        "per_concept_thresholds": d.per_concept,
        "classes": {
            r.name: {"normal": r.normal, "false_alarms": r.false_alarms, "defective": r.defective, "missed": r.missed}
            for r in per_class
        },
        "false_alarm_rate": total.false_alarms / total.normal if total.normal else None,
        "worst_class_false_alarm_rate": max((r.false_alarms / r.normal for r in per_class if r.normal), default=None),
        "caught_rate": 1 - total.missed / total.defective if total.defective else None,
    }


def defect_catches(classes: list[str], paths: list[str], labels: np.ndarray, d: Decisions) -> list[tuple]:
    """(class, defect type, defective images, caught) per defect type, sorted; [] without types."""
    counts: dict[tuple[str, str], list[int]] = {}
    for i in np.flatnonzero(np.asarray(labels).astype(int) == 1):
        kind = defect_type(paths[i])
        if kind is not None:
            entry = counts.setdefault((str(classes[i]), kind), [0, 0])
            entry[0] += 1
            entry[1] += int(d.flagged[i])
    return [(cls, kind, n, caught) for (cls, kind), (n, caught) in sorted(counts.items())]


def _threshold_cell(thresholds: tuple[float, ...]) -> str:
    if len(thresholds) == 1:
        return format_score(thresholds[0])
    return f"{format_score(min(thresholds))} – {format_score(max(thresholds))} ({len(thresholds)})"


def outcome_table_html(rows: list[Outcome]) -> str:
    """The per-class table of false alarms and missed defects (counts and rates), total last."""
    body = []
    for i, r in enumerate(rows):
        tag = ' class="mean"' if i == len(rows) - 1 else ""
        cells = [
            _threshold_cell(r.thresholds),
            str(r.normal),
            str(r.false_alarms),
            format_rate(r.false_alarms, r.normal),
            str(r.defective),
            str(r.missed),
            format_rate(r.missed, r.defective),
        ]
        tds = "".join(f'<td class="num">{c}</td>' for c in cells)
        body.append(f'<tr{tag} data-class="{html.escape(r.name)}"><th scope="row">{html.escape(r.name)}</th>{tds}</tr>')
    head = (
        "<th>class</th><th>threshold</th><th>normal images</th><th>false alarms</th><th>false-alarm rate</th>"
        "<th>defective images</th><th>missed defects</th><th>miss rate</th>"
    )
    return f'<table class="decisions"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def catch_table_html(rows: list[tuple]) -> str:
    """Catch rate per (class, defect type): defective images flagged anomalous. Each class is
    named once, in a cell spanning its defect types' rows."""
    span = Counter(cls for cls, *_ in rows)
    body, named = [], set()
    for cls, kind, n, caught in rows:
        head = ""
        if cls not in named:
            named.add(cls)
            head = f'<th scope="rowgroup" rowspan="{span[cls]}">{html.escape(cls)}</th>'
        body.append(
            f'<tr data-class="{html.escape(cls)}" data-defect="{html.escape(kind)}">{head}'
            f'<td>{html.escape(kind)}</td><td class="num">{n}</td><td class="num">{caught}</td>'
            f'<td class="num">{format_rate(caught, n)}</td></tr>'
        )
    body = "".join(body)
    head = "<th>class</th><th>defect type</th><th>defective images</th><th>caught</th><th>catch rate</th>"
    return f'<table class="defects"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def rule_text(d: Decisions) -> str:
    """The verdict rule in words, with where the thresholds come from (HTML)."""
    cal = d.calibration
    text = (
        f"Verdict rule (the one <code>vqflow predict</code> applies): an image is <b>anomalous</b> when its score "
        "exceeds its threshold. Thresholds are fixed at fit from normal images only (test labels were not "
        "used): each learned concept's typical score on the training normals that fall into it, plus one margin, "
        f"the {100 * cal.quantile:.4g}% quantile of how far {cal.n_images} {html.escape(cal.source)} normal images "
        f"score above their concept's typical score. The global threshold <b>{format_score(d.global_threshold)}</b> "
        "applies to a concept fit never saw."
    )
    if cal.tail_images:
        text += (
            f" A concept with at least {cal.tail_images} training normals keeps its threshold at or above the same "
            "quantile of its own training normals' scores, plus how far the held-out normals score above their "
            "concepts' typical scores (median): a concept whose normals vary more gets a wider margin."
        )
    if cal.tail_fit:
        text += (
            f" Where fewer than {cal.tail_fit} of those normals are expected above a quantile, it is read from an "
            f"exponential tail fitted to the {cal.tail_fit} highest: a few dozen images' plain quantile falls between "
            "the largest two and flags new normals more often than it says."
        )
    if cal.concept_thresholds:
        values = list(cal.concept_thresholds.values())
        used = "some test images are judged by them" if d.per_concept else "no test image falls in those concepts"
        text += (
            f" {len(values)} learned concept(s) have their own threshold ({format_score(min(values))} – "
            f"{format_score(max(values))}); an image is judged by its concept's threshold where one exists, "
            f"else by the global one: {used}."
        )
    return text
