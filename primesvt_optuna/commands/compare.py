"""`primesvt compare CONFIG.toml`: every policy x seed on the same study config, then the report."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run PrimeSVT's prioritized walk and its baselines (smallest-first, random-order, uniform, TPE,
NSGA-II) on the checkpoint, data, constraints and rate grid of a study config, each for several
seeds, as independent studies in parallel processes, into one storage (studies named
<name>/<policy>/seed<k>, side by side in `primesvt dashboard`). Every study gets the same image
budget; the robustness sweep runs once and is charged to the walks that use it. Then the table
(CSV + Markdown) and the figures (PNG + SVG) are written; `primesvt report` regenerates them from
the storage alone. An interrupted comparison resumes where it stopped when run again.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..reporting.frames import POLICIES

    p = subparsers.add_parser(
        "compare", help="compare pruning policies over seeds (table + figures)", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG.toml", help="study config (see studies/digits.toml)")
    p.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES), metavar="POLICY",
                   help=f"policies to compare (default: all of {', '.join(POLICIES)})")
    p.add_argument("--seeds", type=int, default=3, help="seeds per policy (default %(default)s)")
    p.add_argument("--budget-images", type=int, default=None,
                   help="evaluated images each study may spend, sweep charge included (default: the "
                        "shared robustness sweep's images + 60 full evaluations)")
    p.add_argument("--max-trials", type=int, default=None, help="trials per study (default: [search] trials, else 150)")
    p.add_argument("--jobs", type=int, default=2, help="parallel processes (default %(default)s)")
    p.add_argument("--name", default=None, help="comparison name, the <name> of the studies (default: the config's study_name)")
    p.add_argument("--storage", default=None, help="storage (default: sqlite:///runs/compare-<name>.db)")
    p.add_argument("--output", "-o", default=None, help="report folder (default: runs/report-<name>)")
    p.add_argument("--max-accuracy-drop", type=float, default=None, help="override [constraints]")
    p.add_argument("--memory-target", type=float, default=None, help="override [constraints]")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import PrimeSVTError
    from ..plugin.study_config import load_study_config
    from ..reporting import ComparisonSpec, build_report, run_comparison
    from ..reporting.compare import WALK_POLICIES
    from . import output_folder

    cfg = load_study_config(args.config).with_overrides(
        max_accuracy_drop=args.max_accuracy_drop, memory_target=args.memory_target)
    if args.seeds < 1 or args.jobs < 1:
        raise PrimeSVTError("--seeds and --jobs must be at least 1")
    if args.max_trials is not None and args.max_trials < 1:
        raise PrimeSVTError(f"--max-trials must be at least 1, got {args.max_trials}")
    name = args.name or cfg.study_name
    storage = args.storage or f"sqlite:///runs/compare-{name}.db"
    factory = cfg.objective  # a bound method of a frozen dataclass: pickles to the workers
    walk = {"robustness_rule": cfg.robustness_rule, "walk_all": cfg.walk_all, "sweep": cfg.sweep,
            "wait_timeout": cfg.wait_timeout}
    spec = ComparisonSpec(
        name=name, storage=storage, policies=tuple(args.policies), seeds=tuple(range(args.seeds)),
        budget_images=args.budget_images, max_trials=args.max_trials if args.max_trials is not None else cfg.trials or 150,
        n_jobs=args.jobs,
        sampler_options={p: walk for p in WALK_POLICIES} | {p: {"wait_timeout": cfg.wait_timeout}
                                                             for p in ("uniform", "budget-aware")},
    )
    outdir = output_folder(args.output or f"runs/report-{name}")  # before the comparison, not after it
    print(f"[compare] {name}: {cfg.constraints.describe()}", flush=True)
    run_comparison(spec, factory)
    report = build_report(storage, outdir, name)
    print(report.display.to_string(index=False))
    print(f"\nwrote {len(report.files)} files to {outdir}/; see the studies with: primesvt dashboard {storage}")
    return 0
