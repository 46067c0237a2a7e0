"""K = 1, 2, 4 worker processes on one study (SQLite, journal file, PostgreSQL): the same selected
configuration as one worker, no configuration evaluated twice, no trial left RUNNING."""

from __future__ import annotations

import uuid

import optuna
import pytest

import _synthetic_walk as walk
from primesvt_optuna.errors import PrimeSVTError
from primesvt_optuna.storage import open_storage
from primesvt_optuna.workers import run_workers

DELAY = 0.01  # seconds per batch of 100 images: 0.1 s per evaluated trial, so workers overlap


@pytest.fixture(scope="module")
def reference() -> dict:
    return walk.expected()


@pytest.mark.slow
@pytest.mark.parametrize("k", [1, 2, 4])
def test_k_workers_reach_the_one_worker_selection(storage_url: str, k: int, reference: dict) -> None:
    name = f"scaleout-{k}-{uuid.uuid4().hex[:8]}"
    try:
        reports = walk.search(storage_url, name, k, DELAY)
        study = optuna.load_study(study_name=name, storage=open_storage(storage_url))
        got = walk.summary(study)
    finally:
        if storage_url.startswith("postgresql"):
            optuna.delete_study(study_name=name, storage=open_storage(storage_url))
    assert len(reports) == k and not any(r.interrupted for r in reports)
    assert got["finished"]
    assert got["selected"] == reference["selected"]
    assert got["commits"] == reference["commits"]
    assert got["duplicates"] == [], "a configuration was evaluated twice"
    assert set(got["states"]) <= {"COMPLETE", "PRUNED", "FAIL"}, f"trial(s) left unfinished: {got['states']}"
    # everything one worker evaluates, plus at most speculative single-layer rates (the lazy sweep
    # offers the next rates of the current layer to idle workers)
    extra = set(got["evaluated"]) - set(reference["evaluated"])
    assert set(reference["evaluated"]) <= set(got["evaluated"])
    assert all(got["evaluated"][key] == "robustness" for key in extra), extra
    assert sum(r.finished for r in reports) == got["trials"]
    if k > 1:
        assert len(got["workers"]) > 1, "the work was not shared between processes"


def test_worker_count_must_be_positive() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(PrimeSVTError, match="--workers"):
            run_workers(bad, lambda i: i)  # type: ignore[arg-type]


def test_run_workers_returns_results_in_order() -> None:
    assert run_workers(3, lambda i: i * i) == [0, 1, 4]
