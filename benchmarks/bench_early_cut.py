"""How many evaluation images (and how much time) the ConstraintPruner saves over whole studies.

For each policy, the same study runs three times on the shipped digits baseline: without any cut,
with the default cut (memory pre-check + exact accuracy cut, which never changes a verdict), and
with the statistical cut at 99% confidence as well. Reported per run: images evaluated, trials
cut, wall time, and the selected configuration, so that "the exact cut changes nothing the walk
selects" is checked on real data. The walk's trials are the same with and without the exact cut;
TPE's differ (it learns from cut trials differently), so its row compares two whole studies of
the same length rather than the same trials.

    python benchmarks/bench_early_cut.py [--checkpoint digits-2-64] [--policies prioritized tpe]

Writes benchmarks/results/early_cut.csv (machine recorded).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from primesvt_optuna.checkpoint import resolve_checkpoint
from primesvt_optuna.plugin import ConstraintPruner, PruningObjective
from primesvt_optuna.reporting.compare import machine, make_sampler
from primesvt_optuna.reporting.frames import StudyRecord, trials_frame
from primesvt_optuna.reporting.table import selected_trial
from primesvt_optuna.storage import open_storage

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
    return {
        "policy": policy, "cut": cut, "trials": len(frame), "trials_cut": int(frame.cut.sum()),
        "cut_for_memory": int(frame.cut_reason.fillna("").str.startswith("memory").sum()),
        "images_evaluated": int(frame.images_evaluated.fillna(0).sum()),
        "full_evaluation_images": record.val_images, "wall_s": round(wall, 1),
        "selected_trial": None if best is None else int(best.number),
        "selected_saving": None if best is None else round(float(best.memory_saving), 4),
        "selected_accuracy": None if best is None else round(float(best.accuracy), 4),
        "selected_rates": None if best is None else {k: v for k, v in sorted(best.rates.items()) if v},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="digits-2-64")
    parser.add_argument("--policies", nargs="+", default=["prioritized", "tpe"])
    parser.add_argument("--max-accuracy-drop", type=float, default=0.03)
    parser.add_argument("--memory-target", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=64, help="evaluation batch: the exact cut looks after each")
    parser.add_argument("--max-trials", type=int, default=80, help="trials per study (the walk may stop sooner)")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            for cut in CUTS:
                rows.append(run(args, policy, cut, Path(tmp)))
                print(rows[-1], flush=True)
    info = machine()
    for r in rows:
        base = next(b for b in rows if b["policy"] == r["policy"] and b["cut"] == "none")
        r["images_saved_fraction"] = round(1 - r["images_evaluated"] / base["images_evaluated"], 4)
        r["time_saved_fraction"] = round(1 - r["wall_s"] / base["wall_s"], 4)
        r["same_selection_as_no_cut"] = r["selected_rates"] == base["selected_rates"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], *info])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **info})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
