"""Selected configurations before and after N epochs of fine-tuning, next to the unpruned model
(the paper's 73.3 / 70.3 / 72.9), and a uniform-rate-then-fine-tune baseline.

Every policy's selection from a finished comparison (the configuration the policy itself selects,
as ``primesvt search`` and ``export`` deliver it: a walk's committed configuration, TPE's best
feasible trial; from the seed with the median saving) is fine-tuned for the same N epochs with
the same seed and learning rate, keeping the best epoch on validation (the pruned model before
fine-tuning included), as ``primesvt export`` does (``--keep last``: the last epoch). The
baseline prunes every
layer at one rate, fine-tunes for the same N epochs, and keeps the largest grid rate whose
validation accuracy *after* fine-tuning is within the accuracy budget: fine-tuning recovers
accuracy, so a search that never fine-tunes can lose to it, and the table says so when it does.

    python benchmarks/bench_finetune.py STORAGE --prefix digits [--checkpoint digits-2-64] [--epochs 3]
    python benchmarks/bench_finetune.py --rates-from benchmarks/results/finetune/finetune-best-digits-t15.csv ...

``--rates-from`` re-measures the selections an earlier run recorded (its ``rates`` column) when the
comparison's storage is not at hand.

Writes benchmarks/results/finetune/finetune.csv by default (machine recorded; ``--output``: the committed
results are finetune-<tag>-<benchmark>[-lr<lr>].csv).
"""

from __future__ import annotations

import argparse
import ast
import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from primesvt_optuna.checkpoint import load_checkpoint, resolve_checkpoint
from primesvt_optuna.data import load_splits
from primesvt_optuna.pruning import Engine
from primesvt_optuna.reporting.compare import machine
from primesvt_optuna.reporting.frames import REPORT_ATTR, load_studies
from primesvt_optuna.training import evaluate, finetune

from _results import RESULTS, write_rows

OUT = RESULTS / "finetune" / "finetune.csv"
GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def measure(engine: Engine, splits: Any, rates: dict[str, float], epochs: int, seed: int, lr: float,
            keep: str) -> dict[str, Any]:
    """Accuracy of the model pruned at ``rates`` before and after ``epochs`` of fine-tuning (the
    epoch ``keep`` chooses; ``val_last``: validation after the last epoch, whichever is kept)."""
    model = engine.prune(rates) if rates else copy.deepcopy(engine.model)  # never train the engine's model
    val0, test0 = evaluate(model, splits.val), evaluate(model, splits.test)
    start = time.perf_counter()
    kept, last, val1, test1 = 0, val0, val0, test0
    if epochs:
        tuned = finetune(model, splits, epochs=epochs, seed=seed, lr=lr, progress=False, keep=keep)
        kept, last, val1 = tuned["kept_epoch"], tuned["history"][-1]["val_accuracy"], tuned["val_accuracy"]
        test1 = evaluate(model, splits.test)
    return {"memory_saving": round(engine.memory_saving(rates), 4), "val_before": val0, "test_before": test0,
            "val_after": val1, "test_after": test1, "kept_epoch": kept, "val_last": last,
            "finetune_s": round(time.perf_counter() - start, 1)}


def recorded(path: Path) -> list[tuple[str, dict[str, float]]]:
    """(config, rates) of the policy rows of an earlier run's CSV, in its order."""
    rows = pd.read_csv(path)
    rows = rows[rows.config.str.contains(" seed ", regex=False)]
    return [(c, ast.literal_eval(r) if isinstance(r, str) else {}) for c, r in zip(rows.config, rows.rates)]


def selections(storage: str, prefix: str) -> list[tuple[str, dict[str, float]]]:
    """(config, rates) of each policy's median-saving seed among the comparison's finished studies."""
    finished = [r for r in load_studies(storage, prefix) if REPORT_ATTR in r.attrs and r.selection]
    picks = []
    for policy in dict.fromkeys(r.policy for r in finished):
        group = sorted((r for r in finished if r.policy == policy), key=lambda r: (r.selection["memory_saving"], r.seed))
        pick = group[(len(group) - 1) // 2]  # the median seed (lower middle for an even count)
        picks.append((f"{policy} seed {pick.seed}", pick.selection["rates"]))
    return picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("storage", nargs="?")
    parser.add_argument("--prefix")
    parser.add_argument("--rates-from", type=Path, help="an earlier run's CSV: re-measure the selections it recorded")
    parser.add_argument("--keep", choices=("best", "last"), default="best",
                        help="the fine-tuned epoch kept (default: best on validation, as primesvt export)")
    parser.add_argument("--checkpoint", default="digits-2-64")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--policies", nargs="+", default=None, help="only these policies' selections (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=5e-4, help="fine-tuning learning rate (primesvt export's default)")
    parser.add_argument("--max-accuracy-drop", type=float, default=0.03)
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the uniform-then-fine-tune baseline (to re-measure one policy's row)")
    args = parser.parse_args()
    if (args.storage is None or args.prefix is None) == (args.rates_from is None):
        parser.error("give STORAGE and --prefix, or --rates-from CSV")

    model, ckpt = load_checkpoint(resolve_checkpoint(args.checkpoint))
    engine = Engine(model.eval())
    splits = load_splits(ckpt["data"])
    base_val, base_test = evaluate(engine.model, splits.val), evaluate(engine.model, splits.test)
    floor = base_val - args.max_accuracy_drop
    rows: list[dict[str, Any]] = [{"config": "unpruned", "epochs": 0, "memory_saving": 0.0, "val_before": base_val,
                                   "test_before": base_test, "val_after": base_val, "test_after": base_test}]
    done: dict[str, dict[str, Any]] = {}
    for config, picked in (recorded(args.rates_from) if args.rates_from else selections(args.storage, args.prefix)):
        if args.policies and config.split(" seed ")[0] not in args.policies:
            continue
        rates = {k: v for k, v in sorted(picked.items()) if v > 0}
        key = repr(rates)
        if key not in done:
            done[key] = measure(engine, splits, rates, args.epochs, args.seed, args.lr, args.keep)
        rows.append({"config": config, "epochs": args.epochs, **done[key], "rates": key,
                     "within_budget_before": done[key]["val_before"] >= floor - 1e-12,
                     "within_budget_after_finetune": done[key]["val_after"] >= floor - 1e-12})
        print(rows[-1], flush=True)
    lo, hi = -1, len(GRID)  # GRID[lo] passes (or lo = -1: none known), GRID[hi] fails
    while not args.no_baseline and hi - lo > 1:
        mid = (lo + hi) // 2
        result = measure(engine, splits, {layer: GRID[mid] for layer in engine.layers}, args.epochs, args.seed, args.lr,
                         args.keep)
        ok = result["val_after"] >= floor - 1e-12
        rows.append({"config": f"uniform {GRID[mid]:.0%} + fine-tune", "epochs": args.epochs, **result,
                     "within_budget_before": result["val_before"] >= floor - 1e-12,
                     "within_budget_after_finetune": ok})
        print(rows[-1], flush=True)
        lo, hi = (mid, hi) if ok else (lo, mid)
    if not args.no_baseline:
        best = next((r for r in rows if lo >= 0 and r["config"] == f"uniform {GRID[lo]:.0%} + fine-tune"), {})
        rows.append({**best, "config": "uniform-then-fine-tune baseline (largest rate within budget)",
                     "uniform_rate": GRID[lo] if lo >= 0 else 0.0, "epochs": args.epochs})
    info = {**machine(), "checkpoint": str(args.checkpoint), "max_accuracy_drop": args.max_accuracy_drop, "lr": args.lr,
            "keep": args.keep}
    rounded = [{k: (round(v, 4) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()} for r in rows]
    write_rows(rounded, args.output, info)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
