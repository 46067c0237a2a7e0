"""Model bytes: the one memory quantity every target and saving in PrimeSVT uses.

``model_bytes`` = sum of numel x itemsize over parameters and persistent buffers (the model's
``state_dict``), kept-index buffers of a pruned model included. A weight quantized to ``b`` bits
(``primesvt_optuna.precision``) counts instead as its packed integers, ``ceil(cols * b / 8)``
bytes per output channel (each row padded to whole bytes), plus one ``SCALE_DTYPE`` scale per
output channel: exactly the bytes of the exported quantized artifact. Neuron membrane state is
not in the state dict; ``deployment_memory`` measures it and the peak activation memory separately.
"""

from __future__ import annotations

import io
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron
from torch.utils._python_dispatch import TorchDispatchMode


# A quantized model (precision.quantize) carries its quantization state under this attribute; its
# ``tensor_bits`` maps state-dict weight names to bit widths.
QUANT_ATTR = "primesvt_quant"
# One scale per kept output channel of a quantized weight (docs/precision.md: float16 vs float32).
SCALE_DTYPE = torch.float16
SCALE_BYTES = torch.tensor([], dtype=SCALE_DTYPE).element_size()

Shapes = Mapping[str, tuple[tuple[int, ...], int]]


def packed_row_bytes(cols: int, bits: int) -> int:
    """Bytes of one output channel's ``cols`` integers of ``bits`` bits, padded to whole bytes."""
    return (cols * bits + 7) // 8


def quantized_bytes(shape: Sequence[int], bits: int) -> int:
    """Bytes of a weight of ``shape`` quantized per output channel: packed rows plus one scale each."""
    rows = shape[0]
    return rows * (packed_row_bytes(math.prod(shape[1:]), bits) + SCALE_BYTES)


def state_bytes(shapes: Shapes, bits: Mapping[str, int] | None = None) -> int:
    """Bytes of a state dict given as ``{name: (shape, itemsize)}``; names in ``bits`` are
    quantized weights (``quantized_bytes``), every other tensor counts numel x itemsize."""
    bits = bits or {}
    return sum(quantized_bytes(shape, bits[k]) if k in bits else math.prod(shape) * item
               for k, (shape, item) in shapes.items())


def model_bytes(model: nn.Module) -> int:
    """Bytes of parameters and persistent buffers; a quantized model's weights count as stored."""
    quant = getattr(model, QUANT_ATTR, None)
    shapes = {k: (tuple(t.shape), t.element_size()) for k, t in model.state_dict().items()}
    return state_bytes(shapes, quant.tensor_bits if quant is not None else None)


def param_bytes(model: nn.Module) -> int:
    """Bytes of parameters only (reported beside model bytes)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def saved_size(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes (file overhead included)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


class _LiveBytes(TorchDispatchMode):
    """Tracks the bytes of tensors created by operators that are still alive, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    self.live += storage.nbytes()
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out


@torch.no_grad()
def deployment_memory(model: nn.Module, image_shape: tuple[int, ...], batch_size: int = 1) -> dict[str, Any]:
    """Measured memory of one inference: peak activation bytes and neuron-state bytes.

    Peak activation memory is the largest total size of operator outputs alive at once during an
    eager no-grad forward pass (weights excluded). Neuron state is the membrane potential that
    every LIF neuron holds after the pass (what a stateful deployment keeps between steps).
    """
    model.eval()
    param = next(model.parameters())
    x = torch.zeros((batch_size, *image_shape), dtype=param.dtype, device=param.device)
    functional.reset_net(model)
    tracker = _LiveBytes()
    with tracker:
        model(x)
    state = 0
    for m in model.modules():
        if isinstance(m, neuron.BaseNode) and isinstance(m.v, torch.Tensor):
            state += m.v.numel() * m.v.element_size()
    functional.reset_net(model)
    return {"batch_size": batch_size, "peak_activation_bytes": tracker.peak, "neuron_state_bytes": state}
