"""BatchNorm recalibration rules against each other: how far each moves a configuration's
predictions away from the unpruned model's, on the shipped checkpoints.

Per checkpoint, a fixed set of configurations (the unpruned model, the largest layer at int8, every
layer at int8 / int4, every layer pruned at 0.1 / 0.2 / 0.4, the largest layer pruned at 0.5) is
evaluated on the whole validation split three ways: plain (no recalibration), ``absolute``
(EagleEye's rule: statistics re-estimated on 512 training images) and ``relative`` (the trained
statistics moved by what the configuration changed against the unpruned model recalibrated on the
same 512 images, the objective's default; :mod:`primesvt_optuna.pruning.recalibrate`). Per row:
``b`` images only the unpruned model gets right, ``c`` only the configuration, the drop
``(b - c) / n``, and the paired 95% bound a confirmation part of that size would give. The
disagreement ``b + c`` is what widens a confirmation's bound; the drop is what the search steps by.

    python benchmarks/bench_recalibration.py [--checkpoints digits-2-64,digits-hard-2-64,digits-8-64]

Writes benchmarks/results/engine/recalibration.csv (machine columns on every row).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS, write_rows  # noqa: E402

from primesvt_optuna.acceptance.bounds import drop_upper_bound  # noqa: E402
from primesvt_optuna.checkpoint import load_checkpoint, shipped  # noqa: E402
from primesvt_optuna.data import load_splits  # noqa: E402
from primesvt_optuna.precision import quantize  # noqa: E402
from primesvt_optuna.pruning import Engine  # noqa: E402
from primesvt_optuna.pruning.recalibrate import RelativeReference, recalibrate_bn  # noqa: E402
from primesvt_optuna.pruning.structure import structure_of  # noqa: E402
from primesvt_optuna.reporting.compare import machine  # noqa: E402
from primesvt_optuna.training import iter_correct  # noqa: E402

IMAGES = 512
CHECKPOINTS = ("digits-2-64", "digits-hard-2-64", "digits-8-64")
RULES = ("plain", "absolute", "relative")


def configurations(engine: Engine) -> dict[str, tuple[dict[str, float], dict[str, str]]]:
    """``{name: (rates, precisions)}``; the largest layer is the first of the engine's table."""
    layers, largest = list(engine.layers), engine.table["layer"].iloc[0]
    return {
        "unpruned": ({}, {}),
        "largest layer int8": ({}, {largest: "int8"}),
        "every layer int8": ({}, {name: "int8" for name in layers}),
        "every layer int4": ({}, {name: "int4" for name in layers}),
        **{f"every layer pruned {r:g}": ({name: r for name in layers}, {}) for r in (0.1, 0.2, 0.4)},
        "largest layer pruned 0.5": ({largest: 0.5}, {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default=",".join(CHECKPOINTS))
    args = parser.parse_args()
    rows = []
    for name in args.checkpoints.split(","):
        model, ckpt = load_checkpoint(shipped(name))
        splits = load_splits(ckpt["data"])
        engine = Engine(model.eval())
        reference = RelativeReference(engine.model, splits.train, images=IMAGES, seed=0)

        def correct(m: torch.nn.Module) -> list[bool]:
            return torch.cat(list(iter_correct(m, splits.val, batch_size=256))).tolist()

        base = correct(engine.model)
        for label, (rates, precisions) in configurations(engine).items():
            for rule in RULES:
                started = time.perf_counter()
                m = engine.prune(rates) if rates else copy.deepcopy(engine.model)
                if precisions:
                    m = quantize(m, precisions, engine=engine)[0]
                if rule != "plain":
                    relative = reference.statistics(structure_of(m)) if rule == "relative" else None
                    recalibrate_bn(m, splits.train, images=IMAGES, seed=0, relative_to=relative)
                got = correct(m)
                b = sum(1 for r, p in zip(base, got) if r and not p)
                c = sum(1 for r, p in zip(base, got) if p and not r)
                n = len(base)
                rows.append({"checkpoint": name, "configuration": label, "rule": rule, "b": b, "c": c, "n": n,
                             "drop": (b - c) / n, "disagreement": (b + c) / n,
                             "bound_95": drop_upper_bound(b, c, n, 0.95), "recalibration_images": IMAGES,
                             "wall_s": round(time.perf_counter() - started, 2)})
                print(f"{name:18s} {label:26s} {rule:9s} b={b:3d} c={c:3d} drop={100 * (b - c) / n:6.2f}", flush=True)
    path = RESULTS / "engine" / "recalibration.csv"
    write_rows(rows, path, {**machine(), "command": "python benchmarks/bench_recalibration.py"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
