"""Experiment reports: summary.json and a self-contained report.html."""

from fedcare.report.html import render_report
from fedcare.report.output import write_outputs

__all__ = ["render_report", "write_outputs"]
