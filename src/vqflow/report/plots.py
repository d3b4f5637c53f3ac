"""Matplotlib figures of the report (ROC, PRO, score histograms, concepts, code usage)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from vqflow.report.concepts import ConceptTable, usage_stats

DPI = 90
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


def _save(fig: plt.Figure, path: Path, tight: bool = False) -> Path:
    """Save a figure as PNG and free it (`tight` crops to content: a second, slow draw)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight" if tight else None, facecolor="white")
    plt.close(fig)
    return path


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


def roc_figure(curves: dict[str, dict], path: Path) -> Path:
    """Per-class ROC panels: image ROC (solid) and, where available, pixel ROC (dashed).

    `curves[cls]` has "image": (fpr, tpr) or None, "pixel": (fpr, tpr) or None, "title".
    """
    fig, axes = _grid(len(curves))
    legend_done = False
    for ax, (name, c) in zip(axes, curves.items()):
        if c["image"] is None and c["pixel"] is None:
            _empty_panel(ax, name, "no anomalous\ntest images")
            continue
        ax.plot([0, 1], [0, 1], color="#cccccc", lw=0.8)
        if c["image"] is not None:
            ax.plot(*c["image"], color=NORMAL_COLOUR, lw=1.6, label="image")
        if c["pixel"] is not None:
            ax.plot(*c["pixel"], color=PIXEL_COLOUR, lw=1.2, ls="--", label="pixel")
        ax.set_title(c["title"])
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("FPR")
        ax.set_ylabel("TPR")
        if not legend_done:  # one legend for all panels
            ax.legend(loc="lower right", frameon=False, fontsize=7)
            legend_done = True
    return _save(fig, path)


def pro_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, str]], fpr_limit: float, path: Path) -> Path:
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
    return _save(fig, path)


def histogram_figure(scores: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Per-class histograms of image scores, normal vs anomalous, on shared bins."""
    fig, axes = _grid(len(scores), panel_h=2.1)
    for ax, (name, (normal, anomalous)) in zip(axes, scores.items()):
        both = np.concatenate([normal, anomalous])
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        for values, colour in ((normal, NORMAL_COLOUR), (anomalous, ANOMALY_COLOUR)):
            if values.size:
                counts, _ = np.histogram(values, bins=bins)
                ax.stairs(counts, bins, fill=True, color=colour, alpha=0.6)
        ax.set_title(f"{name}\n{normal.size} normal · {anomalous.size} anomalous")
        ax.set_xlabel("image score")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.ticklabel_format(axis="x", useOffset=False)  # scores near 1 read as 0.998, not 1e-3+1
    return _save(fig, path)


def concept_heatmap(table: ConceptTable, path: Path) -> Path:
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
    return _save(fig, path, tight=True)


def usage_figure(code_usage: dict[str, np.ndarray], path: Path) -> Path:
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
    return _save(fig, path)
