"""Matplotlib figures of the report (ROC, PRO, score histograms, concepts, code usage)."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from vqflow.report.concepts import ConceptTable, usage_stats
from vqflow.report.training import TrainLog

DPI = 110
NORMAL_COLOUR = "#4c78a8"
ANOMALY_COLOUR = "#e45756"
PIXEL_COLOUR = "#f58518"
INK = "#333333"

plt.rcParams.update(
    {
        "font.size": 8,
        "axes.titlesize": 9,
        "axes.edgecolor": "#888888",
        "axes.labelcolor": INK,
        "xtick.color": INK,
        "ytick.color": INK,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)


def _save(fig: plt.Figure, tight: bool = False) -> bytes:
    """The figure as PNG bytes, then freed (`tight` crops to content: a second, slow draw)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight" if tight else None, facecolor="white")
    plt.close(fig)
    return buffer.getvalue()


def _grid(n: int, panel_w: float = 2.5, panel_h: float = 2.3, max_cols: int = 5, hspace: float = 0.75):
    """A figure with n small-multiple axes (extra axes hidden); returns (fig, axes list).

    Fixed spacing instead of tight_layout: the layout pass is the slow part of drawing.
    """
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    width, height = panel_w * cols + 0.3, panel_h * rows + 0.3
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(
        left=0.6 / width,
        right=1 - 0.2 / width,
        bottom=0.5 / height,
        top=1 - 0.5 / height,
        wspace=0.45,
        hspace=hspace,
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _empty_panel(ax: plt.Axes, title: str, text: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, text, ha="center", va="center", color="#999999", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _operating_point(ax: plt.Axes, point: tuple[float, float] | None, label: bool) -> None:
    """Mark where the working threshold's verdicts sit on a curve."""
    if point is not None:
        ax.plot(
            *point,
            marker="o",
            ms=5,
            color=INK,
            ls="none",
            label="threshold" if label else None,
            zorder=5,
            clip_on=False,
        )


def roc_figure(curves: dict[str, dict], legend: bool = True) -> bytes:
    """Per-class ROC panels: image ROC (solid), pixel ROC (dashed) where available, and the
    working threshold's (FPR, TPR) as a dot.

    `curves[cls]` has "image": (fpr, tpr) or None, "pixel": (fpr, tpr) or None, "title",
    and optionally "point": (fpr, tpr) or None. `legend`: one legend, in the first panel.
    """
    fig, axes = _grid(len(curves))
    legend_done = not legend
    for ax, (name, c) in zip(axes, curves.items()):
        if c["image"] is None and c["pixel"] is None:
            _empty_panel(ax, name, "no anomalous\ntest images")
            continue
        ax.plot([0, 1], [0, 1], color="#cccccc", lw=0.8)
        if c["image"] is not None:
            ax.plot(*c["image"], color=NORMAL_COLOUR, lw=1.6, label="image")
        if c["pixel"] is not None:
            ax.plot(*c["pixel"], color=PIXEL_COLOUR, lw=1.2, ls="--", label="pixel")
        _operating_point(ax, c.get("point") if c["image"] is not None else None, label=True)
        ax.set_title(c["title"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR")
        if not legend_done:  # one legend for all panels
            ax.legend(loc="lower right", frameon=False, fontsize=7)
            legend_done = True
    return _save(fig)


def pr_figure(curves: dict[str, dict]) -> bytes:
    """Per-class image-level precision-recall panels (step curve, as average precision sums it).

    `curves[cls]` has "curve": (recall, precision) in ascending recall or None, "title",
    "prevalence" (share of anomalous images: a random ranking's precision) and "point":
    (recall, precision) of the working threshold or None.
    """
    fig, axes = _grid(len(curves))
    for ax, (name, c) in zip(axes, curves.items()):
        if c["curve"] is None:
            _empty_panel(ax, name, "no anomalous\ntest images")
            continue
        ax.axhline(c["prevalence"], color="#cccccc", lw=0.8)
        ax.step(*c["curve"], where="pre", color=ANOMALY_COLOUR, lw=1.6)
        _operating_point(ax, c.get("point"), label=False)
        ax.set_title(c["title"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall (defects caught)")
        ax.set_ylabel("precision")
    return _save(fig)


def pro_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, str]], fpr_limit: float) -> bytes:
    """Per-class PRO panels on FPR in [0, fpr_limit] (the AUPRO integration range)."""
    fig, axes = _grid(len(curves))
    for ax, (name, (fpr, pro, title)) in zip(axes, curves.items()):
        if fpr.size == 0:
            _empty_panel(ax, name, "no defect regions")
            continue
        ax.plot(fpr, pro, color=ANOMALY_COLOUR, lw=1.6)
        ax.set_xlim(0, fpr_limit)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.set_xlabel("FPR")
        ax.set_ylabel("PRO")
    return _save(fig)


@dataclass
class HistogramPanel:
    """One class's score histogram: the scores and the thresholds its images are judged by."""

    normal: np.ndarray
    anomalous: np.ndarray
    threshold: float | None = None  # the global working threshold (dashed line)
    concept_thresholds: tuple[float, ...] = ()  # other thresholds its images use (ticks at the top)


def histogram_figure(panels: dict[str, HistogramPanel], legend: bool = True) -> bytes:
    """Per-class histograms of image scores, normal vs anomalous, with the working threshold."""
    fig, axes = _grid(len(panels), panel_h=2.1)
    for ax, (name, p) in zip(axes, panels.items()):
        both = np.concatenate([p.normal, p.anomalous])
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        for values, colour in ((p.normal, NORMAL_COLOUR), (p.anomalous, ANOMALY_COLOUR)):
            if values.size:
                counts, _ = np.histogram(values, bins=bins)
                ax.stairs(counts, bins, fill=True, color=colour, alpha=0.6)
        _threshold_marks(ax, p, bins)
        if legend and ax is axes[0]:  # one legend for all panels
            _histogram_legend(ax, p)
        ax.set_title(f"{name}\n{p.normal.size} normal · {p.anomalous.size} anomalous")
        ax.set_xlabel("image score")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.ticklabel_format(axis="x", useOffset=False)  # scores near 1 read as 0.998, not 1e-3+1
    return _save(fig)


def _histogram_legend(ax: plt.Axes, panel: HistogramPanel) -> None:
    """Legend of the colours and threshold marks, in the first panel."""
    handles = [
        Patch(color=NORMAL_COLOUR, alpha=0.6, label="normal"),
        Patch(color=ANOMALY_COLOUR, alpha=0.6, label="anomalous"),
    ]
    if panel.threshold is not None:
        handles.append(Line2D([], [], color=INK, lw=1.2, ls="--", label="threshold"))
    if panel.concept_thresholds:
        handles.append(Line2D([], [], color=PIXEL_COLOUR, marker="v", ls="none", label="per-concept"))
    ax.legend(handles=handles, loc="best", frameon=False, fontsize=6.5)


def _threshold_marks(ax: plt.Axes, panel: HistogramPanel, bins: np.ndarray) -> None:
    """The global threshold as a dashed line, per-concept ones as ticks; the x range covers them."""
    marks = list(panel.concept_thresholds) + ([] if panel.threshold is None else [panel.threshold])
    if not marks:
        return
    lo, hi = min(float(bins[0]), *marks), max(float(bins[-1]), *marks)
    pad = 0.04 * (hi - lo or 1.0)
    ax.set_xlim(lo - pad, hi + pad)
    if panel.threshold is not None:
        ax.axvline(panel.threshold, color=INK, lw=1.2, ls="--")
    if panel.concept_thresholds:
        ax.plot(
            panel.concept_thresholds,
            [1.0] * len(panel.concept_thresholds),
            marker="v",
            ms=5,
            ls="none",
            color=PIXEL_COLOUR,
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )


def concept_heatmap(table: ConceptTable) -> bytes:
    """Class x concept heatmap (colour = share of the class's images, scaled to the largest; text = count)."""
    counts = table.counts
    rows, cols = counts.shape
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(min(1.8 + 0.45 * cols, 18), 1.0 + 0.4 * rows))
    top = max(float(share.max()), 1e-9)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=top, aspect="auto")
    ax.set_xticks(range(cols), [str(c) for c in table.concept_ids], fontsize=8)
    ax.set_yticks(range(rows), table.class_names, fontsize=8)
    ax.set_xlabel("CPC concept")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if rows * cols <= 900:
        for i in range(rows):
            for j in range(cols):
                if counts[i, j]:
                    colour = "white" if share[i, j] > 0.6 * top else INK
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7.5, color=colour)
    return _save(fig, tight=True)


def usage_figure(code_usage: dict[str, np.ndarray]) -> bytes:
    """Per codebook level, usage counts sorted from most to least used."""
    fig, axes = _grid(len(code_usage), panel_w=3.0, panel_h=2.0)
    for ax, (level, counts) in zip(axes, code_usage.items()):
        counts = np.sort(np.asarray(counts, dtype=np.float64).ravel())[::-1]
        stats = usage_stats(counts)
        ax.stairs(counts, np.arange(counts.size + 1) - 0.5, fill=True, color=NORMAL_COLOUR)
        ax.set_title(f"{level}: {stats.used}/{stats.size} used, ppl {stats.perplexity:.1f}")
        ax.set_xlabel("code (sorted by use)")
        ax.set_ylabel("count")
        ax.set_xlim(-0.5, max(counts.size, 1) - 0.5)
    return _save(fig)


def _epoch_axes(ax: plt.Axes, title: str, chosen_epoch: int | None) -> None:
    """Title, integer epoch ticks and the evaluated epoch as a dotted line."""
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
    if chosen_epoch is not None:
        ax.axvline(chosen_epoch, color="#999999", lw=0.9, ls=":")


def curve_figure(
    epochs: np.ndarray, values: np.ndarray, title: str, chosen_epoch: int | None = None, colour: str = NORMAL_COLOUR
) -> bytes:
    """One per-epoch value (NaN where the log lacks it) as a line."""
    fig, (ax,) = _grid(1, panel_w=3.0)
    if np.isfinite(values).any():
        ax.plot(epochs, values, color=colour, lw=1.4, marker="." if epochs.size <= 40 else None)
        _epoch_axes(ax, title, chosen_epoch)
    else:
        _empty_panel(ax, title, "not in the log")
    return _save(fig)


def code_use_figure(log: TrainLog, chosen_epoch: int | None = None) -> bytes:
    """Share of each codebook's codes in use per epoch (codebook size in the legend)."""
    fig, (ax,) = _grid(1, panel_w=3.0)
    for k, (book, (used, codes)) in enumerate(log.usage.items()):
        share = 100.0 * used / np.where(codes > 0, codes, np.nan)
        size = int(np.nanmax(codes)) if np.isfinite(codes).any() else 0
        ax.plot(log.epochs, share, lw=1.3, color=plt.get_cmap("tab10")(k % 10), label=f"{book} ({size})")
    ax.set_ylim(0, 102)
    _epoch_axes(ax, "codes in use (% of codebook)", chosen_epoch)
    ax.legend(loc="upper right", frameon=False, fontsize=6.5, ncol=2)
    return _save(fig)
