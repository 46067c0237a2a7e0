"""Comparison of pruning policies: studies run side by side in one storage, then tables, figures
and the dashboard, all read back from that storage.

Names are imported on first use, so that ``primesvt dashboard`` does not pay for pandas and
matplotlib before it prints its address.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "StudyRecord": "frames", "load_studies": "frames", "load_sweep": "frames", "parse_study_name": "frames",
    "study_name": "frames",
    "Report": "report", "build_report": "report",
    "comparison_table": "table", "display_table": "table", "runs_table": "table", "selected_trial": "table",
    "to_markdown": "table", "write_tables": "table",
    "write_figures": "figures",
    "ComparisonSpec": "compare", "run_comparison": "compare",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
