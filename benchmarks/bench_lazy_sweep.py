"""The walks before and after the lazy sweep, on the four cells of docs/results.md, with TPE's
images to target measured in the same run (issue 11).

* before: each walk with ``sweep="full"``, the paper's sweep (every layer at every rate, then the
  walk), charged the whole sweep: what ``primesvt search --sweep full`` evaluates;
* after: each walk with ``sweep="lazy"`` (the default), charged only the (layer, rate) lookups it
  made: what ``primesvt search`` evaluates;
* TPE, 3 seeds, capped at ``--tpe-images`` evaluated images (its images to target count until its
  first trial that meets both constraints); ``--tpe-trials`` is only a safety net, and the CSV
  says when it ended a study (``trials`` at the cap).

Per benchmark the full sweep runs once (it does not depend on the memory target), in its own
study, and is copied into every cell's storage, where ``primesvt compare``'s machinery replays it
to the walks and charges what they replayed. A replayed lookup costs the images evaluating it
costs (same objective, same batch schedule, exact cut), so the charged images are the images each
walk spends on its own. The script asserts that every walk commits the same rates before and
after, seed by seed, and writes one row per study plus a summary. The *selection* (the best
configuration the study evaluated that meets both constraints) can differ: a full sweep evaluates
single-layer configurations a lazy walk never looks at, and one of them may save as much as the
commit or more; the summary reports both selections' savings.

    python benchmarks/bench_lazy_sweep.py [--config studies/digits.toml] [--targets 0.15 0.4]
        [--benchmark digits=digits-2-64 digits-hard=digits-hard-2-64] [--seeds 3] [--tpe-images 20000]

Writes benchmarks/results/search_cost/lazy_sweep.csv (per study) and lazy_sweep-summary.csv (per cell and
policy; machine recorded); the studies stay in benchmarks/results/search_cost/lazy_sweep-*.db (``--tag T``: lazy_sweep-T*).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import optuna
import pandas as pd

from primesvt_optuna.plugin.result import result
from primesvt_optuna.plugin.study_config import load_study_config
from primesvt_optuna.reporting import ComparisonSpec, run_comparison
from primesvt_optuna.reporting.compare import WALK_POLICIES, copy_sweep, machine, run_sweep
from primesvt_optuna.reporting.table import runs_table
from primesvt_optuna.storage import open_storage

RESULTS = Path(__file__).resolve().parent / "results" / "search_cost"
DEFAULT = ["digits=digits-2-64", "digits-hard=digits-hard-2-64"]
DETERMINISTIC = ("prioritized", "smallest-first")  # the walk is the same for every seed


def _sweep(bench: str, cfg, prefix: str, jobs: int) -> str:
    """Run (or resume) the benchmark's full sweep in its own storage; returns that storage's URL."""
    url = f"sqlite:///{RESULTS}/{prefix}-{bench}-sweep.db"
    run_sweep(ComparisonSpec(name=bench, storage=url, n_jobs=jobs), cfg.objective)
    return url


def _walk_facts(url: str, study_name: str) -> dict:
    res = result(optuna.load_study(study_name=study_name, storage=open_storage(url)))
    commit = res.walk_commit or {}
    return {"selection": (res.selected or {}).get("rates"), "commit": commit.get("rates"),
            "commit_saving": commit.get("memory_saving")}


def run_cell(args, bench: str, checkpoint: str, target: float, sweep_url: str, prefix: str) -> pd.DataFrame:
    tag = f"{bench}-t{round(target * 100)}"
    url = f"sqlite:///{RESULTS}/{prefix}-{tag}.db"
    cfg = load_study_config(args.config).with_overrides(checkpoint=checkpoint, study_name=tag, memory_target=target)
    frames = []
    for phase, sweep, policies in (("before", "full", WALK_POLICIES), ("after", "lazy", (*WALK_POLICIES, "tpe"))):
        name = f"{tag}-{phase}"
        copy_sweep(sweep_url, bench, url, name)
        walk = {"robustness_rule": cfg.robustness_rule, "walk_all": cfg.walk_all, "sweep": sweep}
        for policy in policies:
            seeds = (0,) if policy in DETERMINISTIC else tuple(range(args.seeds))
            # the walks stop by themselves (default budget: sweep + 60 evaluations, never reached)
            spec = ComparisonSpec(name=name, storage=url, policies=(policy,), seeds=seeds, n_jobs=args.jobs,
                                  budget_images=args.tpe_images if policy == "tpe" else None,
                                  max_trials=args.tpe_trials if policy == "tpe" else args.max_trials,
                                  sampler_options={p: walk for p in WALK_POLICIES})
            started = time.perf_counter()
            records = run_comparison(spec, cfg.objective, progress=False)
            wall = time.perf_counter() - started
            runs = runs_table([r for r in records if r.policy == policy])
            runs = runs.assign(benchmark=bench, target=target, phase=phase, sweep=sweep if policy != "tpe" else "",
                               wall_s=round(wall, 1))
            if policy != "tpe":
                facts = [_walk_facts(url, s) for s in runs.study]
                runs = runs.assign(commit=[str(f["commit"]) for f in facts],
                                   commit_saving=[f["commit_saving"] for f in facts],
                                   selection=[str(f["selection"]) for f in facts])
            frames.append(runs)
            print(runs[["benchmark", "target", "phase", "policy", "seed", "images_to_target", "images_total",
                        "trials", "best_saving"]].to_string(index=False, header=len(frames) == 1), flush=True)
    return pd.concat(frames, ignore_index=True)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cell and walk: median images before/after, their ratio, and against TPE's median."""
    out = []
    for (bench, target), cell in rows.groupby(["benchmark", "target"], sort=False):
        tpe = cell[cell.policy == "tpe"]
        tpe_images = float(tpe.images_to_target.median()) if len(tpe) else math.nan
        for policy in WALK_POLICIES:
            before = cell[(cell.policy == policy) & (cell.phase == "before")].set_index("seed")
            after = cell[(cell.policy == policy) & (cell.phase == "after")].set_index("seed")
            same_commits = bool((before.commit == after.commit).all())
            same_selections = bool((before.selection == after.selection).all())
            med = {f"{phase}_{metric}": float(frame[metric].median())
                   for phase, frame in (("before", before), ("after", after))
                   for metric in ("images_to_target", "images_total")}
            out.append({
                "benchmark": bench, "target": target, "policy": policy, "seeds": len(after),
                "same_commits": same_commits, "same_selections": same_selections, **med,
                "after_over_before_total": round(med["after_images_total"] / med["before_images_total"], 3),
                "before_trials": float(before.trials.median()), "after_trials": float(after.trials.median()),
                "commit_saving": float(after.commit_saving.median()),
                "before_selection_saving": float(before.best_saving.median()),
                "after_selection_saving": float(after.best_saving.median()),
                "tpe_images_to_target_median": tpe_images, "tpe_target_met": f"{int(tpe.target_met.sum())}/{len(tpe)}",
                "after_over_tpe_to_target": round(med["after_images_to_target"] / tpe_images, 3)
                if math.isfinite(tpe_images) and math.isfinite(med["after_images_to_target"]) else math.nan,
            })
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/digits.toml")
    parser.add_argument("--benchmark", nargs="+", default=DEFAULT, metavar="NAME=CHECKPOINT")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.15, 0.4])
    parser.add_argument("--seeds", type=int, default=3, help="seeds of random-order and TPE (the other walks: 1)")
    parser.add_argument("--tpe-images", type=int, default=20_000, help="TPE's image budget per study")
    parser.add_argument("--max-trials", type=int, default=150, help="trial cap of the walks (a safety net)")
    parser.add_argument("--tpe-trials", type=int, default=400,
                        help="TPE's trial cap, a safety net: with the early cut most TPE trials cost a few tens of "
                             "images, so a cap of 150 ends TPE long before its image budget")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tag", default="", help="suffix of the CSV names (e.g. for a smoke run)")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    prefix = "lazy_sweep" + (f"-{args.tag}" if args.tag else "")
    frames = []
    for item in args.benchmark:
        bench, _, checkpoint = item.partition("=")
        cfg = load_study_config(args.config).with_overrides(checkpoint=checkpoint, study_name=bench)
        sweep_url = _sweep(bench, cfg, prefix, args.jobs)
        for target in args.targets:
            frames.append(run_cell(args, bench, checkpoint, target, sweep_url, prefix))
    rows = pd.concat(frames, ignore_index=True)
    info = {**machine(), "wall_s_all": round(time.perf_counter() - started, 1)}
    rows.drop(columns=["rates"]).assign(**{k: str(v) for k, v in info.items()}).to_csv(
        RESULTS / f"{prefix}.csv", index=False)
    summary = summarize(rows)
    summary.assign(**{k: str(v) for k, v in info.items()}).to_csv(RESULTS / f"{prefix}-summary.csv", index=False)
    print(summary.to_string(index=False))
    if not summary.same_commits.all():
        raise SystemExit("a lazy walk committed differently from its full-sweep walk: see the CSV")


if __name__ == "__main__":
    main()
