"""Training time per epoch and evaluation throughput of each small preset on this machine.

Writes benchmarks/results/speed/training.csv with the machine recorded (CPU model, cores, threads,
torch version, and the 1-minute load average: other processes on a shared machine slow every
number here). Run: ``python benchmarks/bench_training.py [--presets a b] [--steps N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from torch.utils.data import DataLoader

from primesvt_optuna.data import load_splits, make_spec
from primesvt_optuna.models import PRESETS, build_model
from primesvt_optuna.pruning import model_bytes
from primesvt_optuna.reporting.compare import machine
from primesvt_optuna.training import evaluate

from _results import RESULTS, write_rows

SMALL = [name for name, c in PRESETS.items() if c["in_channels"] == 1]
OUT = RESULTS / "speed" / "training.csv"


def bench(name: str, steps: int, batch_size: int) -> dict:
    """Seconds per training step (after one warm-up step) scaled to an epoch, and eval images/s."""
    size = PRESETS[name]["img_size"]
    splits = load_splits(make_spec("digits", img_size=size))
    torch.manual_seed(0)
    model = build_model({"preset": name})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    loader = DataLoader(splits.train, batch_size=batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    model.train()
    times = []
    for i, (x, y) in enumerate(loader):
        if i > steps:
            break
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(model)
        times.append(time.perf_counter() - start)
    step_s = sum(times[1:]) / len(times[1:])
    start = time.perf_counter()
    evaluate(model, splits.val)
    eval_s = time.perf_counter() - start
    return {
        "preset": name, "data": "digits", "img_size": size,
        "params": sum(p.numel() for p in model.parameters()), "model_bytes": model_bytes(model),
        "batch_size": batch_size, "train_images": len(splits.train), "steps_timed": len(times) - 1,
        "train_s_per_step": round(step_s, 4), "train_s_per_epoch": round(step_s * len(loader), 2),
        "eval_images": len(splits.val), "eval_images_per_s": round(len(splits.val) / eval_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=SMALL, help="presets to time (default: the 1-channel ones)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per preset")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    rows = []
    for name in args.presets:
        row = bench(name, args.steps, args.batch_size)
        row.update(machine())  # per row: the load average changes between presets
        rows.append(row)
        print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    write_rows(rows, args.output, {})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
