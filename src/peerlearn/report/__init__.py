"""The HTML report of one or several finished runs (`peerlearn report`)."""

from peerlearn.report.build import build_report
from peerlearn.report.collect import ReportOptions

__all__ = ["build_report", "ReportOptions"]
