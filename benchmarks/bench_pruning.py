"""Pruning cost, FLOPs, and the speed that memory savings buy.

For the embedded preset (digits-2-64) and Spikformer-8-512 (random weights), at 25%, 50% and
75% memory saving (a uniform rate over all layers, found exactly from the engine's byte
prediction), against the unpruned model:

* time to prune (rate vector -> new dense model); for digits-2-64 also against one validation
  pass of the embedded data (the goal: under 5% of it);
* FLOPs per image (one image, all T time steps) counted with ``FlopCounterMode`` on the pruned
  model, beside the engine-free prediction (``pruning.flops.FlopsPredictor``, must be equal) and
  the FLOP ratio (unpruned / pruned). Not counted: spiking neurons, BatchNorm, pooling, residual
  adds, index scatter; see ``primesvt_optuna/pruning/flops.py``;
* inference throughput of every model, timed in interleaved rounds (unpruned, 25%, 50%, 75%,
  unpruned, ...) so that a change of machine load hits them alike. ``speedup`` is the ratio of
  the fastest batch of each (the least disturbed; wall clock), ``speedup_cpu`` the same with the
  process CPU time (CPU only: it is blind to time spent waiting for a core on a shared
  machine), ``speedup_median`` the ratio of the medians; ``speedup_vs_flops`` is
  ``speedup / flop_ratio`` (the goal: at least 0.8).

``--align N`` adds, beside each uniform model, one whose every layer keeps the multiple of N
channels nearest to what the uniform rate keeps (per layer rates, ``align`` = N in the CSV): GPU
matrix kernels tile widths that are multiples of 8 better, and uniform rates leave widths such
as 1,669. Its memory saving is close to the target, not equal: compare its ``speedup_vs_flops``.

For the large presets the validation pass the prune time is compared with is 256 images at
``--big-size`` with T=4: one forward pass of ``--big-batch`` images (the same batch the
throughput uses, its fastest of ``--repeats``) scaled to 256 images (``val_pass_s``,
``val_pass_basis``), since a full 256-image pass at 224x224 takes minutes on a shared 2-core CPU.
``--prune-only`` skips the FLOP counts and the throughput rounds (prune time against the
validation pass only): that is how the other families' 8-512-sized presets (``sdt-8-512``,
``qkformer-10-512``, ``maxformer-10-512``) are measured.

The load average is recorded before and after (``load_start``, ``load_end``) with the machine.

Usage: python benchmarks/bench_pruning.py [--models digits-2-64,spikformer-8-512] [--big-size 224]
       [--big-batch 4] [--repeats 5] [--device cpu|cuda] [--prune-only] [--out benchmarks/results/speed/pruning.csv]
Writes benchmarks/results/speed/pruning.csv (or --out).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy-waiting OpenMP on a shared CPU

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from spikingjelly.activation_based import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import RESULTS, write_rows  # noqa: E402

from primesvt_optuna.data import load_splits, make_spec  # noqa: E402
from primesvt_optuna.models import build_model, resolve_config  # noqa: E402
from primesvt_optuna.pruning import Engine, model_bytes  # noqa: E402
from primesvt_optuna.pruning.engine import removed_per_head  # noqa: E402
from primesvt_optuna.pruning.flops import FlopsPredictor, count_flops  # noqa: E402
from primesvt_optuna.reporting.compare import machine  # noqa: E402
from primesvt_optuna.training import evaluate  # noqa: E402

OUT = RESULTS / "speed" / "pruning.csv"
TARGETS = (0.25, 0.5, 0.75)
VAL_IMAGES = 256  # the validation pass prune time is measured against, for the large presets


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


def aligned_rates(engine: Engine, rate: float, multiple: int) -> dict[str, float]:
    """Per-layer rates keeping, in each layer's first channel group, the multiple of ``multiple``
    channels nearest to what ``rate`` keeps (ties: fewer channels; never none). A layer's kept
    width is ``heads * kept_per_head``, so each head keeps a multiple of ``multiple / gcd``;
    a layer narrower than that step keeps the uniform rate."""
    rates = {}
    for name, spec in engine.specs.items():
        group = spec.groups[0]
        per_head = group.channels // group.heads
        step = multiple // math.gcd(multiple, group.heads)
        if per_head < step:  # too narrow to align: the uniform rate
            rates[name] = rate
            continue
        kept = per_head - removed_per_head(group, rate)
        kept = max(step, min(per_head, step * math.floor(kept / step + 0.5 - 1e-9)))
        rates[name] = (per_head - kept) / per_head
    return rates


def keep_heap() -> str:
    """Make glibc's malloc serve every size from its reusable heap (``mallopt``), as jemalloc or
    tcmalloc would: by default each allocation above 32 MiB is a fresh ``mmap`` whose pages
    fault in (and are zeroed) on first touch, a cost per batch that grows with the tensors and
    has nothing to do with the arithmetic. Returns what was done (recorded in the CSV)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        ok = libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, 1 << 30) == 1  # M_MMAP_MAX=0, M_TRIM_THRESHOLD=1 GiB
    except (OSError, AttributeError):
        ok = False
    return "glibc mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=1GiB)" if ok else "default (mallopt unavailable)"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def one_batch(model: torch.nn.Module, x: torch.Tensor, device: str) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward pass and neuron reset."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    model(x)
    functional.reset_net(model)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_model(preset: str, size: int, batch: int, args: argparse.Namespace, val) -> list[dict]:
    device = args.device
    channels = resolve_config({"preset": preset})["in_channels"]
    image = (channels, size, size)
    model = build_model({"preset": preset}).eval()
    engine = Engine(model)
    x = torch.rand(batch, *image, device=device)
    if args.prune_only:
        return prune_only(preset, engine, model, x, args)
    started = time.perf_counter()
    predictor = FlopsPredictor(engine, image)
    predictor_setup_s = time.perf_counter() - started
    base = (0.0, 0)  # every model is keyed (target saving, align)
    variants: dict[tuple[float, int], torch.nn.Module] = {base: model}
    rows: dict[tuple[float, int], dict] = {}
    base_flops = count_flops(model, image)
    if base_flops != predictor.base_flops:
        raise AssertionError(f"{preset}: counted {base_flops} FLOPs, the meta copy {predictor.base_flops}")
    val_pass = timed(lambda: evaluate(model, val), args.repeats) if preset == "digits-2-64" and val is not None else None
    rows[base] = {"model": preset, "target_saving": 0.0, "rate": 0.0, "align": 0, "memory_saving": 0.0,
                 "model_bytes": model_bytes(model), "prune_s": 0.0,
                 "prune_vs_val_pass": 0.0 if val_pass else None,
                 "flops": base_flops, "flops_predicted": predictor.base_flops, "predict_ms": None,
                 "flop_ratio": 1.0}
    for target in args.targets:
        rate = uniform_rate_for(engine, target)
        kinds = [(0, {l: rate for l in engine.layers})]
        if args.align:
            kinds.append((args.align, aligned_rates(engine, rate, args.align)))
        for align, rates in kinds:
            prune_s = timed(lambda: engine.prune(rates), args.repeats)
            pruned = engine.prune(rates)
            started = time.perf_counter()
            predicted = predictor.predict(rates)
            predict_ms = 1e3 * (time.perf_counter() - started)
            counted = count_flops(pruned, image)
            if predicted != counted:
                raise AssertionError(f"{preset} at {target:.0%}: predicted {predicted} FLOPs, counted {counted}")
            variants[target, align] = pruned
            rows[target, align] = {"model": preset, "target_saving": target, "rate": rate, "align": align,
                         "memory_saving": 1 - model_bytes(pruned) / model_bytes(model),
                         "model_bytes": model_bytes(pruned), "prune_s": prune_s,
                         "prune_vs_val_pass": prune_s / val_pass if val_pass else None,
                         "flops": counted, "flops_predicted": predicted, "predict_ms": round(predict_ms, 2),
                         "flop_ratio": base_flops / counted}
    for m in variants.values():
        m.to(device)
        one_batch(m, x, device)  # warm-up (allocator, kernels)
    walls: dict[tuple[float, int], list[float]] = {k: [] for k in variants}
    cpus: dict[tuple[float, int], list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for key, m in variants.items():
            wall, cpu = one_batch(m, x, device)
            walls[key].append(wall)
            cpus[key].append(cpu)
    base_wall, base_cpu, base_med = min(walls[base]), min(cpus[base]), statistics.median(walls[base])
    out = []
    for key, row in rows.items():
        speedup = base_wall / min(walls[key])
        row.update({
            "images_per_s": batch / min(walls[key]), "speedup": speedup,
            "speedup_cpu": base_cpu / min(cpus[key]) if device == "cpu" else None,
            "speedup_median": base_med / statistics.median(walls[key]),
            "speedup_vs_flops": speedup / row["flop_ratio"],
            "batch_s_min": min(walls[key]), "batch_s_median": statistics.median(walls[key]),
            "input": f"{batch}x{channels}x{size}x{size}", "device": device, "repeats": args.repeats,
            "predictor_setup_s": round(predictor_setup_s, 3),
        })
        out.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    if val_pass:
        print(f"{preset}: one validation pass ({len(val)} images) takes {val_pass:.3f} s")
    return out


def prune_only(preset: str, engine: Engine, model: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> list[dict]:
    """Prune time at each target against one 256-image validation pass, scaled from ``x``'s batch."""
    model.to(args.device)
    one_batch(model, x, args.device)  # warm-up
    batch_s = min(one_batch(model, x, args.device)[0] for _ in range(args.repeats))
    val_pass = batch_s * VAL_IMAGES / len(x)
    rows = []
    for target in args.targets:
        rate = uniform_rate_for(engine, target)
        rates = {l: rate for l in engine.layers}
        prune_s = timed(lambda: engine.prune(rates), args.repeats)
        pruned = engine.prune(rates)
        row = {"model": preset, "target_saving": target, "rate": rate, "align": 0, "layers": len(engine.layers),
               "memory_saving": 1 - model_bytes(pruned) / model_bytes(model), "model_bytes": model_bytes(pruned),
               "predicted_bytes_equal": engine.predict_bytes(rates) == model_bytes(pruned), "prune_s": prune_s,
               "val_pass_s": val_pass, "val_pass_basis": f"{len(x)} images x {VAL_IMAGES // len(x)}",
               "prune_vs_val_pass": prune_s / val_pass, "input": "x".join(map(str, x.shape)), "device": args.device,
               "repeats": args.repeats}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits-2-64,spikformer-8-512",
                        help="comma-separated presets; digits-* run at 16x16, the others at --big-size")
    parser.add_argument("--targets", default=",".join(map(str, TARGETS)), help="memory savings, comma-separated")
    parser.add_argument("--big-size", type=int, default=224)
    parser.add_argument("--big-batch", type=int, default=4)
    parser.add_argument("--small-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator as it is (large tensors mmap'd and page-faulted per batch)")
    parser.add_argument("--align", type=int, default=0,
                        help="also time models whose layers keep a multiple of N channels (0: off)")
    parser.add_argument("--prune-only", action="store_true",
                        help="prune time against the validation pass only (no FLOP counts, no throughput rounds)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    allocator = "default" if args.default_malloc else keep_heap()
    args.targets = [float(t) for t in args.targets.split(",") if t]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine")
    load_start = round(os.getloadavg()[0], 2)
    val = None
    rows = []
    for preset in [m for m in args.models.split(",") if m]:
        small = preset.startswith("digits")
        if small and val is None:
            val = load_splits(make_spec("digits", img_size=16)).val
        size = resolve_config({"preset": preset})["img_size"] if small else args.big_size
        rows += bench_model(preset, size, args.small_batch if small else args.big_batch, args, val)
    info = {**machine(), "load_start": load_start, "load_end": round(os.getloadavg()[0], 2), "allocator": allocator}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    write_rows(rows, args.out, info)
    print(f"wrote {args.out} (load average {load_start} -> {info['load_end']})")


if __name__ == "__main__":
    main()
