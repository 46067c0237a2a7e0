"""Per-layer weight precision on the shipped checkpoints: the uniform table, the clip rule and
scale dtype, BatchNorm folding, and CPU inference through PyTorch's int8 kernels.

Modes (each writes one CSV into benchmarks/results/precision/, machine columns on every row):

* ``uniform``: every prunable layer at float / int8 / int4 / int2 (and two combined selections:
  int4 with the MLP at int2; the four MLP layers pruned at 0.9 plus int4), for both clip rules
  (``max``, ``mse``) and float16 or float32 scales: bytes, saving, validation and test accuracy,
  and the total squared weight error. Accuracy is that of the dequantized model.
* ``fold``: BatchNorm folded into the preceding Conv/Linear of every prunable layer (weights
  scaled by gamma / sqrt(var + eps), the rest into the BN's shift), in float and at int8/int4:
  accuracy beside the unfolded model and the bytes a folded deployment would drop.
* ``finetune``: ``precision.finetune_quantized`` of int2-everywhere and int4-with-int2-MLP
  selections of ``digits-2-64`` (squared-error clip), scales fixed or refitted every step:
  accuracy before and after, wall time, and whether precisions and bytes were kept.
* ``kernels``: the int8/int4-quantized ``digits-2-64`` and ``digits-8-64`` run with their
  quantized Linear layers on ``torch.ao.nn.quantized.dynamic.Linear`` (int8 weights holding the
  searched integers and scales; activations quantized per tensor at run time), the rest float:
  accuracy, wall time of a validation pass (best and median of interleaved rounds), the bytes the
  weights occupy while running, and the peak activation bytes of one batch
  (``pruning.memory.deployment_memory``). A process's RSS is not reported: imports alone peak at
  ~470 MB, beside models of 0.1-2 MB.

Usage: python benchmarks/bench_precision.py uniform|fold|finetune|kernels [--checkpoints a,b] [--repeats 5]
       [--epochs 3]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_rows  # noqa: E402

from primesvt_optuna.checkpoint import load_checkpoint, shipped, shipped_names  # noqa: E402
from primesvt_optuna.data import load_splits  # noqa: E402
from primesvt_optuna.precision import GRID, predict_bytes, quantize, uniform  # noqa: E402
from primesvt_optuna.precision import quant as quant_module  # noqa: E402
from primesvt_optuna.pruning import Engine, deployment_memory, model_bytes  # noqa: E402
from primesvt_optuna.pruning import memory as memory_module  # noqa: E402
from primesvt_optuna.reporting.compare import machine  # noqa: E402
from primesvt_optuna.training import evaluate  # noqa: E402

OUT = Path(__file__).parent / "results" / "precision"
KERNEL_CHECKPOINTS = ("digits-2-64", "digits-8-64")


def info() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {**machine(), "commit": commit}


@contextlib.contextmanager
def scale_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Store scales as ``dtype`` inside the block (the package's constant, for this comparison only)."""
    saved = quant_module.SCALE_DTYPE, memory_module.SCALE_BYTES
    quant_module.SCALE_DTYPE = dtype
    memory_module.SCALE_BYTES = torch.tensor([], dtype=dtype).element_size()
    try:
        yield
    finally:
        quant_module.SCALE_DTYPE, memory_module.SCALE_BYTES = saved


def squared_error(model: nn.Module, state) -> float:
    params = dict(model.named_parameters())
    return sum(float((t.dequantize(torch.float64) - params[k].detach().double()).pow(2).sum())
               for k, t in state.tensors.items())


def selections(engine: Engine) -> dict[str, tuple[dict, dict]]:
    """(rates, precisions) of every row of the uniform table."""
    mlp = [l for l in engine.layers if engine.specs[l].role == "mlp" or "fc2" in l]
    out = {name: ({}, uniform(engine, name)) for name in GRID}
    out["int4+int2-mlp"] = ({}, {**uniform(engine, "int4"), **{l: "int2" for l in mlp}})
    out["mlp-0.9+int4"] = ({l: 0.9 for l in mlp}, uniform(engine, "int4"))
    return out


def run_uniform(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        model, ckpt = load_checkpoint(shipped(name))
        engine, splits = Engine(model), load_splits(ckpt["data"])
        for label, (rates, precisions) in selections(engine).items():
            base = engine.prune(rates) if rates else model
            for rule in ("max", "mse"):
                for dtype in (torch.float16, torch.float32):
                    if label == "float" and (rule, dtype) != ("max", torch.float16):
                        continue
                    with scale_dtype(dtype):
                        qmodel, state = quantize(base, precisions, rule=rule)
                        nbytes = predict_bytes(engine, rates, precisions)
                        assert nbytes == model_bytes(qmodel)
                    rows.append({
                        "checkpoint": name, "selection": label, "rule": rule, "scale_dtype": str(dtype)[6:],
                        "model_bytes": nbytes, "base_bytes": engine.base_bytes,
                        "memory_saving": round(1 - nbytes / engine.base_bytes, 4),
                        "val_accuracy": round(evaluate(qmodel, splits.val), 4),
                        "test_accuracy": round(evaluate(qmodel, splits.test), 4),
                        "weight_squared_error": round(squared_error(base, state), 6),
                    })
                    print(rows[-1], flush=True)
    return rows


def fold_bn(model: nn.Module, engine: Engine) -> tuple[nn.Module, int]:
    """A copy with every prunable layer's BatchNorm folded into its Conv/Linear (per output
    channel: weight * a, shift (bias - mean) * a + beta, a = gamma / sqrt(var + eps); the BN left
    as gamma 1, mean 0, var 1 - eps) and the bytes a deployment without those BNs would drop."""
    import copy

    out = copy.deepcopy(model)
    modules = dict(out.named_modules())
    dropped = 0
    for spec in engine.specs.values():
        for group in spec.groups:
            cuts = list(group.cuts)
            for conv_cut, bn_cut in zip(cuts, cuts[1:]):
                if conv_cut.kind != "out" or bn_cut.kind != "norm" or conv_cut.module not in spec.own:
                    continue
                conv, bn = modules[conv_cut.module], modules[bn_cut.module]
                rows = slice(conv_cut.offset, conv_cut.offset + group.channels)
                bn_rows = slice(bn_cut.offset, bn_cut.offset + group.channels)
                with torch.no_grad():
                    a = bn.weight[bn_rows] / torch.sqrt(bn.running_var[bn_rows] + bn.eps)
                    bias = conv.bias[rows] if conv.bias is not None else torch.zeros_like(a)
                    shift = (bias - bn.running_mean[bn_rows]) * a + bn.bias[bn_rows]
                    conv.weight[rows] *= a.view(-1, *([1] * (conv.weight.dim() - 1)))
                    if conv.bias is not None:
                        conv.bias[rows] = 0
                    bn.weight[bn_rows], bn.bias[bn_rows] = 1.0, shift
                    bn.running_mean[bn_rows], bn.running_var[bn_rows] = 0.0, 1.0 - bn.eps
                # gamma, mean, var go; the shift stays (as the conv's bias); the conv's own bias merges into it
                dropped += group.channels * 4 * (3 + (conv.bias is not None))
    return out, dropped


def run_fold(names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        model, ckpt = load_checkpoint(shipped(name))
        engine, splits = Engine(model), load_splits(ckpt["data"])
        folded, dropped = fold_bn(model, engine)
        for label in ("float", "int8", "int4"):
            for variant, m in (("unfolded", model), ("folded", folded)):
                qmodel, _ = quantize(m, uniform(engine, label))
                nbytes = model_bytes(qmodel) - (dropped if variant == "folded" else 0)
                rows.append({
                    "checkpoint": name, "precision": label, "bn": variant, "model_bytes": nbytes,
                    "memory_saving": round(1 - nbytes / engine.base_bytes, 4),
                    "val_accuracy": round(evaluate(qmodel, splits.val), 4),
                    "test_accuracy": round(evaluate(qmodel, splits.test), 4),
                })
                print(rows[-1], flush=True)
    return rows


def run_finetune(names: list[str], epochs: int) -> list[dict]:
    from primesvt_optuna.precision import finetune_quantized, quant_state

    rows = []
    for name in names:
        model, ckpt = load_checkpoint(shipped(name))
        engine, splits = Engine(model), load_splits(ckpt["data"])
        picks = selections(engine)
        for label in ("int2", "int4+int2-mlp"):
            rates, precisions = picks[label]
            for scales in ("fixed", "refit"):
                qmodel, _ = quantize(model, precisions, rule="mse")
                before = (evaluate(qmodel, splits.val), evaluate(qmodel, splits.test), model_bytes(qmodel))
                start = time.perf_counter()
                out = finetune_quantized(qmodel, splits, scales=scales, epochs=epochs, seed=0, progress=False)
                rows.append({
                    "checkpoint": name, "selection": label, "scales": scales, "epochs": epochs,
                    "kept_epoch": out["kept_epoch"], "model_bytes": before[2],
                    "bytes_kept": model_bytes(qmodel) == before[2],
                    "precisions_kept": quant_state(qmodel).precisions == precisions,
                    "val_before": round(before[0], 4), "test_before": round(before[1], 4),
                    "val_after": round(evaluate(qmodel, splits.val), 4),
                    "test_after": round(evaluate(qmodel, splits.test), 4),
                    "seconds": round(time.perf_counter() - start, 1),
                })
                print(rows[-1], flush=True)
    return rows


class DynamicInt8(nn.Module):
    """A quantized Linear on PyTorch's dynamic int8 kernel, with the searched integers and scales."""

    def __init__(self, linear: nn.Linear, q: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        self.linear = DynamicLinear(linear.in_features, linear.out_features, dtype=torch.qint8)
        weight = torch._make_per_channel_quantized_tensor(
            q.to(torch.int8), scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0)
        self.linear.set_weight_bias(weight, None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def int8_kernels(qmodel: nn.Module) -> tuple[nn.Module, int]:
    """The quantized model with every quantized ``nn.Linear`` on the int8 kernel; how many."""
    import copy

    out = copy.deepcopy(qmodel)
    state = out.primesvt_quant
    modules = dict(out.named_modules())
    swapped = 0
    for name, t in state.tensors.items():
        module_name = name.rpartition(".")[0]
        module = modules[module_name]
        if type(module).__name__ == "Linear" and isinstance(module, nn.Linear):
            parent_name, _, attr = module_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else out, attr, DynamicInt8(module, t.q, t.scale))
            swapped += 1
    return out, swapped


def resident_weight_bytes(model: nn.Module) -> int:
    """Bytes the weights occupy in memory as the model runs (int8 kernels: 1 byte a weight)."""
    total = sum(t.numel() * t.element_size() for k, t in model.state_dict().items() if isinstance(t, torch.Tensor)
                and not k.endswith("_packed_params"))
    for m in model.modules():
        if isinstance(m, DynamicInt8):
            w, b = m.linear._packed_params._weight_bias()
            total += w.numel() * 1 + w.q_per_channel_scales().numel() * 8 + (0 if b is None else b.numel() * 4)
    return total


def build_variant(name: str, variant: str) -> tuple[nn.Module, dict]:
    model, ckpt = load_checkpoint(shipped(name))
    if variant == "float":
        return model, ckpt
    precision, kernel = variant.split("-")
    qmodel, _ = quantize(model, uniform(Engine(model), precision))
    return (int8_kernels(qmodel)[0] if kernel == "kernel" else qmodel), ckpt


def run_kernels(names: list[str], repeats: int, batch: int) -> list[dict]:
    rows = []
    variants = ("float", "int8-dequantized", "int8-kernel", "int4-dequantized", "int4-kernel")
    for name in names:
        models = {v: build_variant(name, v)[0] for v in variants}
        splits = load_splits(load_checkpoint(shipped(name))[1]["data"])
        timings: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(repeats):  # interleaved rounds: a change of machine load hits every variant alike
            for v, m in models.items():
                start = time.perf_counter()
                evaluate(m, splits.val, batch_size=batch)
                timings[v].append(time.perf_counter() - start)
        for v, m in models.items():
            peak_act = deployment_memory(m, tuple(splits.val[0][0].shape), batch)["peak_activation_bytes"]
            rows.append({
                "checkpoint": name, "variant": v,
                "int8_kernel_layers": 0 if v == "float" else sum(
                    isinstance(x, DynamicInt8) for x in models[v.replace("dequantized", "kernel")].modules()),
                "model_bytes": model_bytes(models[v.replace("kernel", "dequantized")]),
                "resident_weight_bytes": resident_weight_bytes(m),
                "val_accuracy": round(evaluate(m, splits.val), 4), "test_accuracy": round(evaluate(m, splits.test), 4),
                "val_pass_best_s": round(min(timings[v]), 4),
                "val_pass_median_s": round(sorted(timings[v])[len(timings[v]) // 2], 4),
                "speedup_vs_float": round(min(timings["float"]) / min(timings[v]), 3),
                "peak_activation_bytes": peak_act,
                "peak_bytes": resident_weight_bytes(m) + peak_act, "batch_size": batch,
            })
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("uniform", "fold", "finetune", "kernels"))
    parser.add_argument("--checkpoints", default=None, help="comma-separated shipped names (default: per mode)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (mode finetune)")
    args = parser.parse_args()
    default = {"kernels": KERNEL_CHECKPOINTS, "finetune": ("digits-2-64",)}.get(
        args.mode, shipped_names())
    names = args.checkpoints.split(",") if args.checkpoints else list(default)
    if args.mode == "kernels":
        rows = run_kernels(names, args.repeats, args.batch)
    elif args.mode == "finetune":
        rows = run_finetune(names, args.epochs)
    else:
        rows = {"uniform": run_uniform, "fold": run_fold}[args.mode](names)
    write_rows(rows, OUT / f"{args.mode}.csv", info())
    print(f"wrote {OUT / f'{args.mode}.csv'}")


if __name__ == "__main__":
    main()
