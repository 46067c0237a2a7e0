"""Search efficiency of every policy on both embedded benchmarks (digits and digits-hard).

Runs ``primesvt compare``'s comparison (6 policies x 3 seeds, same objective, constraints and
image budget, the robustness sweep charged to the walks) from a study config, once per benchmark
with that benchmark's shipped baseline as the checkpoint, writes the report (table + figures) per
benchmark, and one CSV with, per benchmark and baseline policy, ratios measured in the same run:

* ``saving_ratio``: prioritized median best feasible saving / the policy's (> 1: the walk saves more);
* ``selection_ratio``: the same for the configuration each policy itself selects (what
  ``primesvt search`` and ``export`` deliver: for a walk its committed configuration);
* ``images_ratio`` / ``time_ratio``: the policy's median evaluated images / seconds to reach the
  memory target over prioritized's (> 1: the walk is cheaper; empty when either never met it).

    python benchmarks/bench_search.py [--config studies/digits.toml] [--memory-target 0.4]
        [--benchmark digits=digits-2-64 digits-hard=digits-hard-2-64]

Writes benchmarks/results/search-<tag>.csv and benchmarks/results/search-<tag>-<benchmark>/
(machine recorded), where the tag names the memory target (``t15`` for 15%); the studies stay in
benchmarks/results/search-<tag>.db for `primesvt dashboard`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd

from primesvt_optuna.plugin.study_config import load_study_config
from primesvt_optuna.reporting import ComparisonSpec, build_report, run_comparison
from primesvt_optuna.reporting.compare import WALK_POLICIES, machine

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT = ["digits=digits-2-64", "digits-hard=digits-hard-2-64"]


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """Prioritized against every other policy, from one comparison's table."""
    ref = table.set_index("policy").loc["prioritized"]
    rows = []
    for _, r in table.iterrows():
        if r.policy == "prioritized":
            continue
        saving = ref.best_saving_median / r.best_saving_median if r.best_saving_median > 0 else math.nan
        chosen = (ref.policy_selection_saving_median / r.policy_selection_saving_median
                  if r.policy_selection_saving_median > 0 else math.nan)
        both = math.isfinite(ref.images_to_target_median) and math.isfinite(r.images_to_target_median)
        rows.append({"policy": r.policy, "saving_ratio": round(saving, 3) if saving == saving else None,
                     "selection_ratio": round(chosen, 3) if chosen == chosen else None,
                     "images_ratio": round(r.images_to_target_median / ref.images_to_target_median, 3) if both else None,
                     "time_ratio": round(r.seconds_to_target_median / ref.seconds_to_target_median, 3) if both else None})
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/digits.toml", help="study config: constraints, grid, batch size")
    parser.add_argument("--benchmark", nargs="+", default=DEFAULT, metavar="NAME=CHECKPOINT")
    parser.add_argument("--memory-target", type=float, default=None, help="override the config's memory target")
    parser.add_argument("--budget-images", type=int, default=None, help="default: sweep + 60 full evaluations")
    parser.add_argument("--max-trials", type=int, default=150)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--storage", default=None, help="default: sqlite:///benchmarks/results/search-<tag>.db")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild tables, figures and CSV from the storage; keep the earlier run's wall time and machine")
    args = parser.parse_args()
    target = args.memory_target if args.memory_target is not None else load_study_config(args.config).constraints.memory_target
    tag = f"t{round(target * 100)}" if target else "budget"
    storage = args.storage or f"sqlite:///{RESULTS}/search-{tag}.db"
    path = RESULTS / f"search-{tag}.csv"
    earlier = pd.read_csv(path) if path.exists() else None
    frames = []
    for item in args.benchmark:
        name, _, checkpoint = item.partition("=")
        cfg = load_study_config(args.config).with_overrides(checkpoint=checkpoint, study_name=name,
                                                            memory_target=args.memory_target)
        walk = {"robustness_rule": cfg.robustness_rule, "walk_all": cfg.walk_all}
        spec = ComparisonSpec(name=name, storage=storage, seeds=tuple(range(args.seeds)),
                              budget_images=args.budget_images, max_trials=args.max_trials, n_jobs=args.jobs,
                              sampler_options={p: walk for p in WALK_POLICIES})
        if not args.report_only:
            start = time.perf_counter()
            run_comparison(spec, cfg.objective)
            wall = time.perf_counter() - start
        report = build_report(storage, RESULTS / f"search-{tag}-{name}", name)
        print(report.display.to_string(index=False), flush=True)
        table = report.table.merge(ratios(report.table), on="policy", how="left")
        table = table.assign(benchmark=name, checkpoint=checkpoint, constraints=cfg.constraints.describe())
        if args.report_only:  # the run's own wall time and machine, from the earlier CSV
            if earlier is None or name not in set(earlier.benchmark):
                raise SystemExit(f"--report-only: {path} has no rows of {name!r} to take the run's wall time from")
            kept = earlier[earlier.benchmark == name].drop(columns=[c for c in table.columns if c != "policy"], errors="ignore")
            table = table.merge(kept, on="policy", how="left")
        else:
            table = table.assign(comparison_wall_s=round(wall, 1), **{k: str(v) for k, v in machine().items()})
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    if earlier is not None:  # keep the other benchmarks' rows of an earlier run at this target
        out = pd.concat([earlier[~earlier.benchmark.isin(out.benchmark)], out], ignore_index=True)
    first = ["benchmark", "policy", "saving_ratio", "selection_ratio", "images_ratio", "time_ratio"]
    out = out[first + [c for c in out.columns if c not in first]]
    out.to_csv(path, index=False)
    print(out[first].to_string(index=False))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
