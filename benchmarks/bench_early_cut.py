"""How many evaluation images (and how much time) the ConstraintPruner saves over whole studies.

Four measurements:

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
* ``--schedule POLICY ...`` (the cut's own efficiency): each policy's study (``prioritized`` runs
  its full robustness sweep, where most cuts happen; ``tpe`` gets ``--tpe-trials``) on each
  ``--checkpoints``, with the exact cut, evaluated in the growing batch schedule
  (``--first-batch``, then doubling the images seen, up to ``--batch-size``) and in plain
  batches. Per study: the average cost of an accuracy-cut trial as a fraction of a full
  evaluation (goal <= 25%), how many cuts fired at the first look, images, wall time, and whether
  the selection is the same.
  Then the wall (and CPU) time of surviving trials with and without the schedule (goal <= 5%
  loss), measured A/B: up to ``--survivors`` configurations that passed are evaluated whole both
  ways, alternating which goes first, ``--survivor-repeats`` times, and their accuracies compared.
* ``--oracle`` (what any exact cut could do): the images of every single-layer sweep configuration
  and of ``--oracle-random`` random complete configurations are classified one by one in the
  seeded order; for those that miss the floor, the images an exact cut needs when it looks after
  every image (the lower bound of any schedule), after the default schedule's batches and after
  plain batches. An exact cut cannot fire before ``total * (1 - floor)`` images are wrong.

    python benchmarks/bench_early_cut.py --storage sqlite:///benchmarks/results/comparison/comparison-digits.db --prefix digits-t15
    python benchmarks/bench_early_cut.py --rerun prioritized [--checkpoint digits-2-64]
    python benchmarks/bench_early_cut.py --schedule tpe prioritized --memory-target 0.15 --tpe-trials 100 \
        --checkpoints digits-2-64 --output benchmarks/results/search_cost/early_cut-schedule-digits.csv
    python benchmarks/bench_early_cut.py --schedule tpe prioritized --memory-target 0.15 --tpe-trials 60 \
        --max-trials 60 --survivors 8 --checkpoints digits-hard-2-64 \
        --output benchmarks/results/search_cost/early_cut-schedule-digits-hard.csv
    python benchmarks/bench_early_cut.py --oracle --oracle-random 40 --output benchmarks/results/search_cost/early_cut-oracle.csv

Writes benchmarks/results/search_cost/early_cut.csv by default (machine recorded; ``--output``: the committed
results are early_cut-<tag>-<benchmark>.csv, early_cut-rerun.csv, early_cut-schedule-<benchmark>.csv
and early_cut-oracle.csv).
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from primesvt_optuna.checkpoint import resolve_checkpoint
from primesvt_optuna.plugin import ConstraintPruner, PrioritizedSampler, PruningObjective
from primesvt_optuna.plugin.constraints import layer_of
from primesvt_optuna.plugin.pruner import looks_of
from primesvt_optuna.reporting.compare import machine, make_sampler
from primesvt_optuna.reporting.frames import StudyRecord, load_studies, load_sweep, trials_frame
from primesvt_optuna.plugin.result import result
from primesvt_optuna.reporting.table import selected_trial
from primesvt_optuna.storage import open_storage

from _results import RESULTS, write_rows

OUT = RESULTS / "search_cost" / "early_cut.csv"
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


def _full_sweep_options() -> dict[str, Any]:
    """The prioritized walk with its whole robustness sweep (where most cuts happen), whichever
    version of the sampler is installed (``sweep="full"`` once the lazy walk is the default)."""
    if "sweep" in inspect.signature(PrioritizedSampler.__init__).parameters:
        return {"prioritized": {"sweep": "full"}}
    return {}


def _rates(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    return {layer_of(k): float(v) for k, v in trial.params.items() if k.startswith("rate:") and v}


def run_schedule(args: argparse.Namespace, checkpoint: str, policy: str, first_batch: int | None,
                 folder: Path) -> tuple[dict[str, Any], optuna.Study, PruningObjective]:
    """One study with the exact cut, in the batch schedule from ``first_batch`` (None: plain)."""
    objective = PruningObjective(checkpoint, max_accuracy_drop=args.max_accuracy_drop, memory_target=args.memory_target,
                                 batch_size=args.batch_size, first_batch=first_batch, eval_images=args.eval_images,
                                 pruner=ConstraintPruner())
    storage = open_storage(f"sqlite:///{folder}/{checkpoint}-{policy}-{first_batch}.db")
    study = optuna.create_study(storage=storage, directions=objective.directions,
                                sampler=make_sampler(policy, 0, objective.grid, _full_sweep_options()))
    if policy in ("tpe", "nsga2"):  # as `primesvt search` does: trial 0 is the reference for every policy
        study.enqueue_trial({f"rate:{name}": 0.0 for name, _ in objective.layers}, user_attrs={"phase": "reference"})
    load = os.getloadavg()[0]
    start = time.perf_counter()
    study.optimize(objective, n_trials=args.tpe_trials if policy in ("tpe", "nsga2") else args.max_trials)
    wall = time.perf_counter() - start
    trials = study.get_trials(deepcopy=False)
    total = objective.eval_images
    cut = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED
           and str(t.user_attrs.get("cut_reason", "")).startswith("accuracy")]
    memory_cut = [t for t in trials if str(t.user_attrs.get("cut_reason", "")).startswith("memory")]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    fractions = [t.user_attrs["images_evaluated"] / total for t in cut]
    first_look = objective.schedule[0]
    chosen = result(study).selected
    row = {
        "mode": "schedule", "checkpoint": checkpoint, "policy": policy + ("-full-sweep" if policy == "prioritized" else ""),
        "first_batch": first_batch, "batch_size": args.batch_size, "eval_images": total,
        "looks": looks_of(objective.schedule), "trials": len(trials), "trials_complete": len(complete),
        "cut_for_accuracy": len(cut), "cut_for_memory": len(memory_cut),
        "cut_cost_mean": round(statistics.fmean(fractions), 4) if fractions else None,
        "cut_cost_median": round(statistics.median(fractions), 4) if fractions else None,
        "cut_at_first_look": sum(1 for t in cut if t.user_attrs["images_evaluated"] == first_look),
        "images_evaluated": int(sum(t.user_attrs.get("images_evaluated") or 0 for t in trials)),
        "images_cut_trials": int(sum(t.user_attrs["images_evaluated"] for t in cut)),
        "images_decided_complete": int(sum(t.user_attrs.get("images_decided") or 0 for t in complete)),
        "survivors_wall_s": round(sum(t.user_attrs.get("wall_time") or 0 for t in complete), 2),
        "wall_s": round(wall, 1), "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2),
        "policy_selection_saving": None if chosen is None else round(float(chosen["memory_saving"]), 4),
        "policy_selection_rates": None if chosen is None else {k: v for k, v in sorted(chosen["rates"].items()) if v},
    }
    return row, study, objective


def time_survivors(args: argparse.Namespace, checkpoint: str, configs: list[dict[str, float]]) -> dict[str, Any]:
    """Whole evaluations of passing configurations in plain batches and in the schedule, A/B."""
    common = dict(max_accuracy_drop=args.max_accuracy_drop, batch_size=args.batch_size, eval_images=args.eval_images)
    objectives = {"plain": PruningObjective(checkpoint, first_batch=None, **common),
                  "schedule": PruningObjective(checkpoint, first_batch=args.first_batch, **common)}
    wall = {k: 0.0 for k in objectives}
    cpu = {k: 0.0 for k in objectives}
    same = True
    load = os.getloadavg()[0]
    for rep in range(args.survivor_repeats):
        for i, rates in enumerate(configs):
            order = ["plain", "schedule"] if (i + rep) % 2 == 0 else ["schedule", "plain"]
            correct = {}
            for name in order:
                w, c = time.perf_counter(), time.process_time()
                correct[name] = sum(k for k, _ in objectives[name].iter_batches(rates))
                wall[name] += time.perf_counter() - w
                cpu[name] += time.process_time() - c
            same = same and correct["plain"] == correct["schedule"]
    return {
        "mode": "survivors", "checkpoint": checkpoint, "first_batch": args.first_batch, "batch_size": args.batch_size,
        "eval_images": objectives["plain"].eval_images, "configurations": len(configs),
        "repeats": args.survivor_repeats, "plain_wall_s": round(wall["plain"], 2),
        "schedule_wall_s": round(wall["schedule"], 2),
        "wall_loss": round(wall["schedule"] / wall["plain"] - 1, 4), "plain_cpu_s": round(cpu["plain"], 2),
        "schedule_cpu_s": round(cpu["schedule"], 2), "cpu_loss": round(cpu["schedule"] / cpu["plain"] - 1, 4),
        "same_accuracies": same, "load_1min_before": round(load, 2), "load_1min_after": round(os.getloadavg()[0], 2),
    }


def schedule_rows(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    rows = []
    for checkpoint in args.checkpoints:
        survivors: list[dict[str, float]] = []
        for policy in args.schedule:
            runs = {}
            for first_batch in (args.first_batch, None):
                row, study, objective = run_schedule(args, checkpoint, policy, first_batch, folder)
                runs[first_batch] = (row, study)
                rows.append(row)
                print(row, flush=True)
            (new, new_study), (old, old_study) = runs[args.first_batch], runs[None]
            new["images_saved_vs_plain"] = round(1 - new["images_evaluated"] / old["images_evaluated"], 4)
            new["same_selection_as_plain"] = new["policy_selection_rates"] == old["policy_selection_rates"]
            # surviving trials present in both runs (the walk's are the same trials; TPE's may differ)
            done = {tuple(sorted(t.params.items())): t for t in old_study.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("phase") != "reference"}
            pairs = [(t, done[key]) for t in new_study.get_trials(deepcopy=False)
                     if t.state == optuna.trial.TrialState.COMPLETE and (key := tuple(sorted(t.params.items()))) in done]
            new["survivors_matched"] = len(pairs)
            if pairs:
                a = sum(t.user_attrs["wall_time"] for t, _ in pairs)
                b = sum(u.user_attrs["wall_time"] for _, u in pairs)
                new["survivors_wall_loss_in_study"] = round(a / b - 1, 4)
            if policy == "prioritized":
                survivors = [_rates(t) for t, _ in pairs if _rates(t)]
        if survivors and args.survivors:
            step = max(1, len(survivors) // args.survivors)
            rows.append(time_survivors(args, checkpoint, survivors[::step][: args.survivors]))
            print(rows[-1], flush=True)
    return rows


def oracle_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Cost of an exact cut per look schedule, from per-image correctness (see module docs)."""
    import random

    import torch
    from spikingjelly.activation_based import functional
    from torch.utils.data import DataLoader

    from primesvt_optuna.plugin.pruner import batch_schedule

    rows = []
    for checkpoint in args.checkpoints:
        objective = PruningObjective(checkpoint, max_accuracy_drop=args.max_accuracy_drop, batch_size=args.batch_size,
                                     first_batch=args.first_batch, eval_images=args.eval_images)
        n, order = objective.eval_images, objective.eval_order

        def right(rates: dict[str, float]) -> list[bool]:
            model = objective.engine.prune(rates) if rates else objective.engine.model
            model.eval()
            out: list[bool] = []
            with torch.inference_mode():
                for x, y in DataLoader(objective.eval_set, batch_sampler=[order[i:i + 256] for i in range(0, n, 256)]):
                    out += (model(x).argmax(1) == y).tolist()
                    functional.reset_net(model)
            return out

        floor = sum(right({})) / n - args.max_accuracy_drop
        rng = random.Random(0)
        grid = list(objective.grid)
        populations = {
            "sweep (each layer alone at each rate)": [{name: r} for name, _ in objective.layers for r in grid],
            "random complete configurations": [{name: rng.choice([0.0, *grid]) for name, _ in objective.layers}
                                               for _ in range(args.oracle_random)],
        }
        schedules = {"plain batches": batch_schedule(n, args.batch_size, None),
                     f"schedule from {args.first_batch}": batch_schedule(n, args.batch_size, args.first_batch),
                     "every image (bound)": [1] * n}
        for population, configs in populations.items():
            fails = []
            for config in configs:
                ok = right({k: r for k, r in config.items() if r})
                if sum(ok) / n < floor - 1e-12:
                    cum = [0]
                    for v in ok:
                        cum.append(cum[-1] + v)
                    fails.append(cum)
            for name, sizes in schedules.items():
                costs = []
                for cum in fails:
                    cost = n
                    for seen in looks_of(sizes):
                        if seen < n and (cum[seen] + n - seen) / n < floor - 1e-12:
                            cost = seen
                            break
                    costs.append(cost / n)
                cut = [c for c in costs if c < 1]
                rows.append({
                    "mode": "oracle", "checkpoint": checkpoint, "eval_images": n, "floor": round(floor, 4),
                    "first_possible_cut": round(n * (1 - floor), 1), "population": population,
                    "configurations": len(configs), "infeasible": len(fails), "looks": name, "batches": len(sizes),
                    "cut": len(cut), "cut_cost_mean": round(statistics.fmean(cut), 4) if cut else None,
                    "infeasible_cost_mean": round(statistics.fmean(costs), 4) if costs else None,
                })
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="a finished comparison's storage")
    parser.add_argument("--prefix", help="the comparison's name in that storage")
    parser.add_argument("--rerun", nargs="*", default=[], metavar="POLICY", help="policies to run with/without cuts")
    parser.add_argument("--checkpoint", default="digits-2-64")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.03)
    parser.add_argument("--memory-target", type=float, default=0.4)
    parser.add_argument("--batch-size", type=int, default=256, help="largest evaluation batch (the schedule grows up to it); the cut looks after each batch")
    parser.add_argument("--max-trials", type=int, default=150, help="trials per study (the walk may stop sooner)")
    parser.add_argument("--schedule", nargs="*", default=[], metavar="POLICY",
                        help="policies whose cut efficiency to measure with/without the batch schedule")
    parser.add_argument("--checkpoints", nargs="+", default=["digits-2-64", "digits-hard-2-64"])
    parser.add_argument("--first-batch", type=int, default=32, help="the schedule's first batch")
    parser.add_argument("--eval-images", type=int, default=None, help="seeded validation subset (default: all)")
    parser.add_argument("--tpe-trials", type=int, default=150, help="trials per TPE/NSGA-II study (--schedule)")
    parser.add_argument("--survivors", type=int, default=16, help="passing configurations timed A/B (--schedule)")
    parser.add_argument("--survivor-repeats", type=int, default=2)
    parser.add_argument("--oracle", action="store_true", help="the cost of any exact cut (see module docs)")
    parser.add_argument("--oracle-random", type=int, default=60, help="random complete configurations (--oracle)")
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
    if args.schedule:
        with tempfile.TemporaryDirectory() as tmp:
            rows += schedule_rows(args, Path(tmp))
    if args.oracle:
        rows += oracle_rows(args)
    write_rows(rows, args.output, machine())
    for r in rows:
        print(r)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
