"""Per-layer weight precision beside pruning: quantize a (pruned) model's layers to int8/int4/int2,
predict its exact bytes with the pruning engine's memory model, and write a compact checkpoint."""

from .artifact import QUANT_FORMAT, artifact_sizes, save_quantized
from .finetune import finetune_quantized
from .quant import (
    FLOAT, GRID, QuantState, QuantTensor, fit_scales, memory_saving, parse_grid, parse_precision, predict_bytes,
    quant_state, quantizable, quantize, tensor_bits, uniform,
)

__all__ = [
    "FLOAT", "GRID", "QUANT_FORMAT", "QuantState", "QuantTensor", "artifact_sizes", "finetune_quantized", "fit_scales", "memory_saving",
    "parse_grid", "parse_precision", "predict_bytes", "quant_state", "quantizable", "quantize", "save_quantized",
    "tensor_bits", "uniform",
]
