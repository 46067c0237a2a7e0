"""Pruning cost and the speed that memory savings buy, on this CPU.

For the embedded preset (digits-2-64) and Spikformer-8-512 (random weights):
* time to prune (rate vector -> new dense model) against one validation pass of the embedded
  preset (the goal: under 5% of it; a few seconds for 8-512);
* inference throughput of models pruned to 25%, 50% and 75% memory saving (a uniform rate over
  all layers, found exactly from the engine's byte prediction) against the unpruned model, all
  measured in the same run.

Usage: python benchmarks/bench_pruning.py [--big-size 224] [--big-batch 2] [--repeats 3]
Writes benchmarks/results/pruning.csv.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from spikingjelly.activation_based import functional

from primesvt_optuna.data import load_splits, make_spec
from primesvt_optuna.models import build_model
from primesvt_optuna.pruning import Engine, model_bytes
from primesvt_optuna.reporting.compare import machine
from primesvt_optuna.training import evaluate

OUT = Path(__file__).parent / "results" / "pruning.csv"


def uniform_rate_for(engine: Engine, target: float) -> float:
    """Smallest uniform rate (to 1e-3) whose exact predicted saving reaches ``target``."""
    lo, hi = 0.0, 0.95
    for _ in range(20):
        mid = (lo + hi) / 2
        if engine.memory_saving({l: mid for l in engine.layers}) >= target:
            hi = mid
        else:
            lo = mid
    return round(hi, 4)


@torch.inference_mode()
def throughput(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    model.eval()
    model(x)
    functional.reset_net(model)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        functional.reset_net(model)
        times.append(time.perf_counter() - t)
    return x.shape[0] / statistics.median(times)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big-size", type=int, default=224)
    parser.add_argument("--big-batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    val = load_splits(make_spec("digits", img_size=16)).val
    rows = []
    for preset, size, batch, channels in [("digits-2-64", 16, 256, 1), ("spikformer-8-512", args.big_size, args.big_batch, 3)]:
        model = build_model({"preset": preset}).eval()
        engine = Engine(model)
        x = torch.rand(batch, channels, size, size)
        base_tp = throughput(model, x, args.repeats)
        val_pass = timed(lambda: evaluate(model, val), args.repeats) if preset == "digits-2-64" else None
        rows.append({"model": preset, "target_saving": 0.0, "rate": 0.0, "memory_saving": 0.0,
                     "model_bytes": model_bytes(model), "prune_s": 0.0, "images_per_s": base_tp, "speedup": 1.0,
                     "prune_vs_val_pass": 0.0 if val_pass else None, "input": f"{batch}x{channels}x{size}x{size}"})
        for target in (0.25, 0.5, 0.75):
            rate = uniform_rate_for(engine, target)
            rates = {l: rate for l in engine.layers}
            prune_s = timed(lambda: engine.prune(rates), args.repeats)
            pruned = engine.prune(rates)
            tp = throughput(pruned, x, args.repeats)
            rows.append({"model": preset, "target_saving": target, "rate": rate,
                         "memory_saving": 1 - model_bytes(pruned) / model_bytes(model), "model_bytes": model_bytes(pruned),
                         "prune_s": prune_s, "images_per_s": tp, "speedup": tp / base_tp,
                         "prune_vs_val_pass": prune_s / val_pass if val_pass else None,
                         "input": f"{batch}x{channels}x{size}x{size}"})
            print(rows[-1], flush=True)
        if val_pass:
            print(f"{preset}: one validation pass ({len(val)} images) takes {val_pass:.3f} s")
    table = pd.DataFrame(rows)
    for key, value in machine().items():
        table[key] = value
    OUT.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT, index=False)
    print(table.drop(columns=list(machine())).to_string(index=False))


if __name__ == "__main__":
    main()
