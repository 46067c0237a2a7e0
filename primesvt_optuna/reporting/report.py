"""Table and figures of a comparison, regenerated from its storage alone (nothing is re-run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from optuna.storages import BaseStorage

from ..storage import open_storage
from .figures import write_figures
from .frames import load_studies, load_sweep
from .table import comparison_table, display_table, runs_table, write_tables


@dataclass
class Report:
    """What a report wrote and the tables behind it."""

    runs: pd.DataFrame
    table: pd.DataFrame
    display: pd.DataFrame
    files: list[Path]


def build_report(storage: str | BaseStorage, outdir: str | Path, prefix: str | None = None) -> Report:
    """Read every ``<prefix>/<policy>/seed<k>`` study of ``storage`` and write ``comparison.csv``,
    ``comparison.md``, ``runs.csv`` and the figures (PNG + SVG) into ``outdir``."""
    if isinstance(storage, str):
        storage = open_storage(storage, read_only=True)
    records = load_studies(storage, prefix)
    runs = runs_table(records)
    paths = write_tables(runs, outdir)
    files = list(paths.values()) + write_figures(records, outdir, load_sweep(storage, records[0].name))
    table = comparison_table(runs)
    return Report(runs, table, display_table(table), files)
