"""One CSV writer for the benchmark scripts: every row carries the machine it was measured on."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_rows(rows: Sequence[Mapping[str, Any]], path: Path, info: Mapping[str, Any]) -> None:
    """Rows (their keys in first-seen order) followed by the ``info`` columns, on every row."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*keys, *info])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **info})
