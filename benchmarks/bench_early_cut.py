"""How many evaluation images (and how much time) the ConstraintPruner saves over whole studies.

Two measurements:

* ``--storage`` (cheap): every study of a finished comparison, per policy. A cut trial records
  how many images it evaluated, so the images it saved are the full evaluation minus those; the
  seconds saved are estimated from the same study's seconds per evaluated image. Memory pre-check
  rejections (complete configurations that cannot meet the target, never evaluated) and accuracy
  cuts are counted apart.
* ``--rerun POLICY ...`` (expensive): the same study run three times on the checkpoint, without
  any cut, with the default cut (memory pre-check + exact accuracy cut, which never changes a
  verdict) and with the statistical cut at 99% confidence; wall times are measured, and whether
  the selection is the same as without the cut is checked on real data. The walk's trials are the
  same with and without the exact cut; TPE's differ (it learns from cut trials differently).

    python benchmarks/bench_early_cut.py --storage sqlite:///benchmarks/results/search-t15.db --prefix digits
    python benchmarks/bench_early_cut.py --rerun prioritized [--checkpoint digits-2-64]

Writes benchmarks/results/early_cut.csv by default (machine recorded; ``--output``: the committed
results are early_cut-<tag>-<benchmark>.csv and early_cut-rerun.csv).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from primesvt_optuna.checkpoint import resolve_checkpoint
from primesvt_optuna.plugin import ConstraintPruner, PruningObjective
from primesvt_optuna.reporting.compare import machine, make_sampler
from primesvt_optuna.reporting.frames import StudyRecord, load_studies, load_sweep, trials_frame
from primesvt_optuna.plugin.result import result
from primesvt_optuna.reporting.table import selected_trial
from primesvt_optuna.storage import open_storage

from _results import write_rows

OUT = Path(__file__).resolve().parent / "results" / "early_cut.csv"
CUTS = {
    "none": None,
    "exact": ConstraintPruner(),
    "statistical-99%": ConstraintPruner(confidence=0.99),
}


def run(args: argparse.Namespace, policy: str, cut: str, folder: Path) -> dict[str, Any]:
    objective = PruningObjective(str(resolve_checkpoint(args.checkpoint)), max_accuracy_drop=args.max_accuracy_drop,
                                 memory_target=args.memory_target, batch_size=args.batch_size, pruner=CUTS[cut])
    storage = open_storage(f"sqlite:///{folder}/{policy}-{cut}.db")
    study = optuna.create_study(storage=storage, directions=objective.directions,
                                sampler=make_sampler(policy, 0, objective.grid))
    start = time.perf_counter()
    study.optimize(objective, n_trials=args.max_trials)
    wall = time.perf_counter() - start
    frame = trials_frame(study.get_trials(deepcopy=False))
    record = StudyRecord("bench", policy, 0, study.study_name, study.user_attrs, frame)
    best = selected_trial(record)
    chosen = result(study).selected  # what the policy itself selects (search / export deliver it)
    return {
        "policy": policy, "cut": cut, "trials": len(frame), "trials_cut": int(frame.cut.sum()),
        "cut_for_memory": int(frame.cut_reason.fillna("").str.startswith("memory").sum()),
        "images_evaluated": int(frame.images_evaluated.fillna(0).sum()),
        "images_recalibrated": int(frame.images_recalibrated.fillna(0).sum()),  # BN recalibration's forward passes
        "full_evaluation_images": record.val_images, "wall_s": round(wall, 1),
        "selected_trial": None if best is None else int(best.number),
        "selected_saving": None if best is None else round(float(best.memory_saving), 4),
        "selected_accuracy": None if best is None else round(float(best.accuracy), 4),
        "selected_rates": None if best is None else {k: v for k, v in sorted(best.rates.items()) if v},
        "policy_selection_saving": None if chosen is None else round(float(chosen["memory_saving"]), 4),
        "policy_selection_rates": None if chosen is None else {k: v for k, v in sorted(chosen["rates"].items()) if v},
    }


def cut_savings(label: str, records: list[StudyRecord]) -> dict[str, Any]:
    """Images evaluated and saved by each kind of cut over ``records``; seconds saved estimated
    from their own seconds per evaluated image."""
    evaluated = saved_memory = saved_accuracy = seconds = 0.0
    cut_memory = cut_accuracy = trials = 0
    for r in records:
        t, full = r.trials, r.val_images
        cut = t[t.cut]
        memory = cut.cut_reason.fillna("").str.startswith("memory")
        evaluated += float(t.images_evaluated.fillna(0).sum())
        saved_memory += float((full - cut[memory].images_evaluated.fillna(0)).sum())
        saved_accuracy += float((full - cut[~memory].images_evaluated.fillna(0)).sum())
        cut_memory += int(memory.sum())
        cut_accuracy += int((~memory).sum())
        trials += len(t)
        seconds += float(t.wall_time.fillna(0).sum())
    saved = saved_memory + saved_accuracy
    return {
        "mode": "storage", "policy": label, "studies": len(records), "trials": trials,
        "cut_for_memory": cut_memory, "cut_for_accuracy": cut_accuracy, "images_evaluated": int(evaluated),
        "images_saved_memory_precheck": int(saved_memory), "images_saved_accuracy_cut": int(saved_accuracy),
        "images_saved_fraction": round(saved / (evaluated + saved), 4) if evaluated + saved else None,
        "accuracy_cut_saved_fraction": round(saved_accuracy / (evaluated + saved_accuracy), 4)
        if evaluated + saved_accuracy else None,
        "evaluation_s": round(seconds, 1),
        "est_seconds_saved": round(saved * seconds / evaluated, 1) if evaluated else None,
    }


def from_storage(storage: str, prefix: str) -> list[dict[str, Any]]:
    """Per policy over a finished comparison, plus the shared robustness sweep on its own row
    (the walks replay it from a cache, so their own rows count only the walk)."""
    records = load_studies(storage, prefix)
    rows = [cut_savings(p, [r for r in records if r.policy == p]) for p in dict.fromkeys(r.policy for r in records)]
    sweep = load_sweep(storage, prefix)
    if sweep is not None:
        rows.insert(0, cut_savings("robustness-sweep (shared by the walks)", [sweep]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="a finished comparison's storage")
    parser.add_argument("--prefix", help="the comparison's name in that storage")
    parser.add_argument("--rerun", nargs="*", default=[], metavar="POLICY", help="policies to run with/without cuts")
    parser.add_argument("--checkpoint", default="digits-2-64")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.03)
    parser.add_argument("--memory-target", type=float, default=0.4)
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch: the exact cut looks after each")
    parser.add_argument("--max-trials", type=int, default=150, help="trials per study (the walk may stop sooner)")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = from_storage(args.storage, args.prefix) if args.storage else []
    reruns = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.rerun:
            for cut in CUTS:
                reruns.append(run(args, policy, cut, Path(tmp)))
                print(reruns[-1], flush=True)
    for r in reruns:
        base = next(b for b in reruns if b["policy"] == r["policy"] and b["cut"] == "none")
        r["images_saved_fraction"] = round(1 - r["images_evaluated"] / base["images_evaluated"], 4)
        r["time_saved_fraction"] = round(1 - r["wall_s"] / base["wall_s"], 4)
        r["same_best_trial_as_no_cut"] = r["selected_rates"] == base["selected_rates"]
        r["same_selection_as_no_cut"] = r["policy_selection_rates"] == base["policy_selection_rates"]
    rows += [{"mode": "rerun", **r} for r in reruns]
    write_rows(rows, args.output, machine())
    for r in rows:
        print(r)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
