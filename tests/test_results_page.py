"""docs/results.md's tables are what ``benchmarks/results_page.py`` makes of the result CSVs, and
benchmarks/results/MANIFEST.csv lists every result file: the page cannot drift from the data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_page_and_manifest_match_the_result_files() -> None:
    done = subprocess.run([sys.executable, str(BENCHMARKS / "results_page.py"), "--check"], cwd=BENCHMARKS.parent,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_check_names_a_table_that_differs_from_its_csvs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import results_page

    page = tmp_path / "results.md"
    text = results_page.PAGE.read_text(encoding="utf-8")
    first = results_page.MARKER.search(text).group("name")
    page.write_text(text.replace("<!-- /table -->", "| a row typed by hand |\n<!-- /table -->", 1), encoding="utf-8")
    monkeypatch.setattr(results_page, "PAGE", page)
    assert results_page.check() == (f"docs/results.md: table '{first}' differs from its CSVs: "
                                    "run python benchmarks/results_page.py")
