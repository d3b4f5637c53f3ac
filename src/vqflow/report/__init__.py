"""Heatmap overlays, plots and the self-contained report.html of an evaluation."""

from vqflow.report.data import ReportData
from vqflow.report.overlay import overlay, save_image
from vqflow.report.tables import format_decisions, format_table
from vqflow.report.writer import write_report

__all__ = ["ReportData", "format_decisions", "format_table", "overlay", "save_image", "write_report"]
