"""Comparison and report pipeline on a tiny synthetic budget: the right rows and columns, every
figure written, costs charged honestly, and `primesvt report` (a fresh process reading only the
storage) reproducing the comparison's table."""

from __future__ import annotations

import functools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from primesvt_optuna.cli import main
from primesvt_optuna.plugin import SyntheticObjective
from primesvt_optuna.reporting import ComparisonSpec, build_report, run_comparison, runs_table
from primesvt_optuna.reporting.frames import POLICIES, parse_study_name
from primesvt_optuna.reporting.table import (
    TABLE_COLUMNS,
    bootstrap_median_ci,
    comparison_table,
    cost_curve,
    display_table,
    selected_trial,
)

SIZES = {"fc1": 4000, "fc2": 3000, "proj": 500}
FACTORY = functools.partial(
    SyntheticObjective, SIZES, sensitivity={"fc1": 0.05, "fc2": 0.2, "proj": 0.5},
    max_accuracy_drop=0.03, memory_target=0.25, grid=(0.3, 0.6), n_images=200, batch_size=50,
    accept="point",  # the comparison's machinery under the paper's rule; confirmed studies: test_confirmation.py
)
FIGURES = ["pareto", "progress", "layer_rates", "robustness"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[ComparisonSpec, list, Path]:
    folder = tmp_path_factory.mktemp("compare")
    spec = ComparisonSpec(name="tiny", storage=f"sqlite:///{folder}/compare.db", seeds=(0, 1, 2),
                          budget_images=3000, max_trials=8, n_jobs=2)
    records = run_comparison(spec, FACTORY, progress=False)
    return spec, records, folder


def test_one_study_per_policy_and_seed(comparison):
    spec, records, _ = comparison
    assert [(r.policy, r.seed) for r in records] == [(p, s) for p in POLICIES for s in (0, 1, 2)]
    assert all(parse_study_name(r.study_name) == ("tiny", r.policy, r.seed) for r in records)


def test_table_rows_and_columns(comparison):
    _, records, _ = comparison
    runs = runs_table(records)
    assert len(runs) == 3 * len(POLICIES)
    table = comparison_table(runs)
    assert list(table.columns) == TABLE_COLUMNS
    assert list(table.policy) == list(POLICIES)
    assert (table.seeds == 3).all()
    shown = display_table(table)
    assert list(shown.policy) == list(POLICIES)
    assert {"best feasible saving", "policy's selection (met both)", "val accuracy", "images to target",
            "trials to target", "time to target", "cut early", "images saved by cut", "total time"} <= set(shown.columns)


def test_policy_selection_is_what_search_returns(comparison):
    """A walk selects its committed configuration, which may save less than the best accuracy-
    feasible trial it evaluated; the other policies select exactly that best trial."""
    _, records, _ = comparison
    runs = runs_table(records)
    for record, row in zip(records, runs.itertuples()):
        assert record.selection is not None
        assert row.policy_selection_saving == pytest.approx(record.selection["memory_saving"])
        if record.policy in ("prioritized", "smallest-first", "random-order"):
            assert row.policy_selection_saving <= row.best_saving + 1e-12
        else:
            assert row.policy_selection_saving == pytest.approx(row.best_saving)


def test_sweep_is_charged_to_the_walks_only(comparison):
    _, records, _ = comparison
    for record in records:
        charged = (record.report.get("charged") or {}).get("images", 0)
        if record.policy in ("prioritized", "smallest-first", "random-order"):
            # the shared sweep: every layer alone at every grid rate, cut trials cost fewer images
            assert 0 < charged <= len(SIZES) * 2 * 200
            assert cost_curve(record).images.iloc[0] >= charged
        else:
            assert charged == 0
    deterministic = [r for r in records if r.policy == "prioritized"]
    assert len({selected_trial(r).memory_saving for r in deterministic}) == 1  # same walk every seed


def test_budget_is_respected(comparison):
    _, records, _ = comparison
    for record in records:
        t = record.trials
        replayed = (t.phase == "robustness") & (t.images_evaluated == 0)  # the walks' cached sweep trials
        assert (~replayed).sum() <= 8
        if record.policy in ("tpe", "nsga2"):  # the budget callback stops them at the image budget
            assert cost_curve(record).images.iloc[-1] < 3000 + 200
        if record.policy == "budget-aware":  # told the budget, as by `search --budget-images`: never over it
            assert record.attrs["primesvt:sampler"]["budget_images"] == 3000
            assert cost_curve(record).images.iloc[-1] <= 3000


def test_a_lazy_walk_pays_for_its_lookups_not_the_whole_sweep(tmp_path):
    """A budget smaller than the shared sweep still lets a lazy walk reach the target: it is
    charged the (layer, rate) lookups it replays, as it replays them."""
    spec = ComparisonSpec(name="lazy", storage=f"sqlite:///{tmp_path}/lazy.db", policies=("prioritized",),
                          seeds=(0,), budget_images=700, max_trials=8, n_jobs=1)
    (record,) = run_comparison(spec, FACTORY, progress=False)
    sweep_images = len(SIZES) * 2 * 200
    charged = record.report["charged"]["images"]
    assert record.trials.cached.any() and 0 < charged < sweep_images
    curve = cost_curve(record)
    assert curve.feasible.any()  # the target is met within a budget below the sweep's cost
    assert curve.images.iloc[-1] <= 700 + 200


def test_report_from_storage_reproduces_the_table(comparison, tmp_path):
    spec, records, folder = comparison
    expected = comparison_table(runs_table(records))
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "primesvt_optuna.cli", "report", spec.storage, "--prefix", "tiny",
                           "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = pd.read_csv(out / "comparison.csv")
    pd.testing.assert_frame_equal(got, expected.replace([np.inf, -np.inf], np.inf), check_dtype=False)
    assert "prioritized" in (out / "comparison.md").read_text()
    for stem in FIGURES:
        for fmt in ("png", "svg"):
            assert (out / f"{stem}.{fmt}").stat().st_size > 1000


def test_build_report_writes_every_file(comparison, tmp_path):
    spec, _, _ = comparison
    report = build_report(spec.storage, tmp_path, "tiny")
    names = {p.name for p in report.files}
    assert {"comparison.csv", "comparison.md", "runs.csv"} <= names
    assert {f"{s}.{f}" for s in FIGURES for f in ("png", "svg")} <= names


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", f"sqlite:///{tmp_path}/missing.db", "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    optuna.create_study(storage=f"sqlite:///{tmp_path}/other.db", study_name="not-a-comparison")
    assert main(["report", f"sqlite:///{tmp_path}/other.db", "-o", str(tmp_path / "o")]) == 2
    assert "no comparison studies" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(Exception, match="unknown policies"):
        ComparisonSpec(name="x", storage="sqlite:///x.db", policies=("prioritized", "greedy"))


def test_bootstrap_interval_of_the_median():
    lo, hi = bootstrap_median_ci(np.array([0.9, 0.9, 0.9]), np.array([360, 360, 360]))
    assert lo < 0.9 < hi and hi - lo < 0.06  # about +-1.96 * sqrt(.9 * .1 / 360) = +-3.1 points
    wide = bootstrap_median_ci(np.array([0.9]), np.array([50]))
    assert wide[1] - wide[0] > hi - lo
    assert all(math.isnan(v) for v in bootstrap_median_ci(np.array([math.nan]), np.array([0])))


def test_selection_is_the_largest_saving_meeting_accuracy(comparison):
    _, records, _ = comparison
    for record in records:
        best = selected_trial(record)
        ok = record.trials[record.trials.accuracy_ok]
        if best is None:
            assert ok.empty
        else:
            assert best.memory_saving == ok.memory_saving.max()
            assert best.constraint_accuracy <= 0


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_report_fails_a_dead_workers_trial_and_leaves_a_read_only_storage_alone(comparison, tmp_path):
    """`primesvt report` reads the study, so it accounts for every RUNNING trial: a killed worker's
    trial becomes FAIL with the reason; through a read-only URI nothing is written."""
    import shutil

    from primesvt_optuna.reporting.frames import load_studies
    from primesvt_optuna.storage import STALE, WORKER, open_storage, worker_info

    spec, _, folder = comparison
    copy = tmp_path / "copy.db"
    shutil.copy(folder / "compare.db", copy)
    storage = open_storage(f"sqlite:///{copy}")
    name = next(s.study_name for s in optuna.get_all_study_summaries(storage) if parse_study_name(s.study_name))
    study = optuna.load_study(study_name=name, storage=storage)
    zombie = study.ask()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    storage.set_trial_system_attr(zombie._trial_id, WORKER, {**worker_info(), "pid": dead.pid})
    del storage, study

    load_studies(f"sqlite:///file:{copy}?mode=ro&uri=true", prefix="tiny")
    reader = open_storage(f"sqlite:///{copy}", read_only=True)
    assert reader.get_trial(zombie._trial_id).state == optuna.trial.TrialState.RUNNING, "read-only: nothing written"
    load_studies(f"sqlite:///{copy}", prefix="tiny")
    frozen = reader.get_trial(zombie._trial_id)
    assert frozen.state == optuna.trial.TrialState.FAIL and "is gone" in frozen.system_attrs[STALE]
