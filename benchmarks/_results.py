"""Where the benchmark scripts write, and one CSV writer: every row carries the machine it was measured on.

Result files live in one folder per question (``comparison``, ``finetune``, ``search_cost``,
``reliability``, ``speed``, ``engine``), so a reader finds what answers a question in one place;
``benchmarks/results/MANIFEST.csv`` says which script and command wrote each file.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_rows(rows: Sequence[Mapping[str, Any]], path: Path, info: Mapping[str, Any]) -> None:
    """Rows (their keys in first-seen order) followed by the ``info`` columns, on every row."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*keys, *info])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **info})
