"""Comparison of pruning policies: studies run side by side in one storage, then tables, figures
and the dashboard, all read back from that storage."""

from .frames import StudyRecord, load_studies, parse_study_name, study_name
from .report import Report, build_report
from .table import comparison_table, display_table, runs_table, selected_trial, to_markdown, write_tables

__all__ = [
    "Report", "StudyRecord", "build_report", "comparison_table", "display_table", "load_studies",
    "parse_study_name", "runs_table", "selected_trial", "study_name", "to_markdown", "write_tables",
]
