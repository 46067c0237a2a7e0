"""Per-layer weight precision beside pruning: quantize a (pruned) model's layers to int8/int4/int2,
predict its exact bytes with the pruning engine's memory model, and write a compact checkpoint."""

import importlib
from typing import Any

_HOME = {  # name -> submodule: imported on first use, so the grid's validation needs no torch
    **dict.fromkeys(("QUANT_FORMAT", "artifact_sizes", "save_quantized"), "artifact"),
    "finetune_quantized": "finetune",
    **dict.fromkeys(("FLOAT", "GRID", "parse_grid", "parse_precision"), "grid"),
    **dict.fromkeys(("QuantState", "QuantTensor", "fit_scales", "memory_saving", "predict_bytes", "quant_state",
                     "quantizable", "quantize", "tensor_bits", "uniform"), "quant"),
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)


__all__ = [
    "FLOAT", "GRID", "QUANT_FORMAT", "QuantState", "QuantTensor", "artifact_sizes", "finetune_quantized", "fit_scales", "memory_saving",
    "parse_grid", "parse_precision", "predict_bytes", "quant_state", "quantizable", "quantize", "save_quantized",
    "tensor_bits", "uniform",
]
