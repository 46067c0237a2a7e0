"""Compare PrimeSVT's prioritized walk with its baselines through the Python API.

Every policy (prioritized = largest layer first, smallest-first, random-order, uniform, TPE,
NSGA-II) runs on the same objective, constraints and image budget, for 3 seeds each, as
independent studies in parallel processes, into one SQLite file. Then the table and figures are
written, and `primesvt dashboard sqlite:///runs/compare-example.db` shows the studies side by side.

    python examples/compare_policies.py [--checkpoint digits-2-64] [--memory-target 0.3]

`primesvt compare studies/digits.toml` does the same from a TOML study file.
"""

from __future__ import annotations

import argparse
import functools

from primesvt_optuna.checkpoint import resolve_checkpoint
from primesvt_optuna.plugin import PruningObjective
from primesvt_optuna.reporting import ComparisonSpec, build_report, run_comparison


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="digits-2-64", help="checkpoint file or shipped baseline")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.03)
    parser.add_argument("--memory-target", type=float, default=0.3)
    parser.add_argument("--budget-images", type=int, default=60_000, help="evaluated images per study")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="parallel processes")
    parser.add_argument("--storage", default="sqlite:///runs/compare-example.db")
    parser.add_argument("--output", default="runs/compare-example")
    args = parser.parse_args()

    # A picklable factory: each worker process builds its own objective (loads the checkpoint);
    # the walks get the shared robustness sweep as robustness_cache=...
    factory = functools.partial(
        PruningObjective, str(resolve_checkpoint(args.checkpoint)), max_accuracy_drop=args.max_accuracy_drop,
        memory_target=args.memory_target, grid=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    )
    spec = ComparisonSpec(name="example", storage=args.storage, seeds=tuple(range(args.seeds)),
                          budget_images=args.budget_images, n_jobs=args.jobs)
    run_comparison(spec, factory)
    report = build_report(spec.storage, args.output, spec.name)
    print(report.display.to_string(index=False))
    print(f"\nwrote {len(report.files)} files to {args.output}/; "
          f"see them side by side: primesvt dashboard {spec.storage}")


if __name__ == "__main__":
    main()
