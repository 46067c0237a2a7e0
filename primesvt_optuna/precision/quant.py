"""Per-layer weight precision: symmetric per-output-channel quantization of a (pruned) model.

A layer's precision applies to the weights of the modules it owns (``LayerSpec.own``: the
Conv/Linear whose output channels the layer removes, both q and k for a q+k pair, the whole
fused qkv projection of spikingjelly's Spikformer). Biases, BatchNorm, neurons and the
classification head stay float; the head (or any other Conv/Linear no layer owns) is quantized
only when ``precisions`` names its module. Each kept output channel ``c`` stores integers
``q[c] in [-(2^(b-1) - 1), 2^(b-1) - 1]`` and one scale ``s[c]`` (``SCALE_DTYPE``); the model
users deploy computes with ``q[c] * s[c]``, so every accuracy is measured on exactly that model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import PrimeSVTError
from .grid import FLOAT, GRID, parse_grid, parse_precision  # noqa: F401 (re-exported)
from ..pruning.adapters import ROOMS, layer_specs
from ..pruning.engine import Engine
from ..pruning.memory import QUANT_ATTR, SCALE_DTYPE, state_bytes
from ..pruning.spec import LayerSpec
from ..pruning.structure import GATHER_BUFFER, SCATTER_BUFFER, structure_of

RULES = ("max", "mse")
# Max-abs is the default: on the shipped checkpoints it kept accuracy as well or better than the
# squared-error clip (docs/precision.md, "Which clip rule").
DEFAULT_RULE = "max"
# Clip fractions of a channel's largest |weight| that the "mse" rule tries.
CLIP_FRACTIONS = torch.linspace(0.05, 1.0, 96, dtype=torch.float64)
# Alternating least-squares steps after the grid ("mse" rule): each never raises the error.
REFINE_STEPS = 4


def qmax(bits: int) -> int:
    """Largest integer magnitude of a symmetric ``bits``-bit channel (int2: -1, 0, 1)."""
    return 2 ** (bits - 1) - 1


def _quantize_rows(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale[:, None]), -qmax(bits), qmax(bits))


def _representable(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` rounded to the stored dtype (never 0), as float64 for the search."""
    tiny = torch.finfo(SCALE_DTYPE).tiny
    return scale.clamp_min(tiny).to(SCALE_DTYPE).clamp_min(tiny).double()


def fit_scales(weight: torch.Tensor, bits: int, rule: str = DEFAULT_RULE) -> torch.Tensor:
    """One ``SCALE_DTYPE`` scale per output channel of ``weight``.

    ``max``: the channel's largest |weight| maps to the largest integer. ``mse``: the clip fraction
    of ``CLIP_FRACTIONS`` with the least squared error, then ``REFINE_STEPS`` alternating steps
    (integers for the scale, then the least-squares scale ``<w, q> / <q, q>`` for those integers),
    keeping a step only where it lowers the channel's error. Errors are computed with the stored
    (rounded) scale, so the chosen scale is the best one the artifact can hold.
    """
    if rule not in RULES:
        raise PrimeSVTError(f"unknown clip rule {rule!r}: choose from {', '.join(RULES)}")
    w = weight.detach().reshape(weight.shape[0], -1).double().cpu()
    peak = w.abs().amax(1)
    best = _representable(peak / qmax(bits))
    if rule == "max":
        return best.to(SCALE_DTYPE)

    def error(scale: torch.Tensor) -> torch.Tensor:
        return (_quantize_rows(w, scale, bits) * scale[:, None] - w).pow(2).sum(1)

    best_err = error(best)
    for fraction in CLIP_FRACTIONS.tolist():
        scale = _representable(peak * fraction / qmax(bits))
        err = error(scale)
        better = err < best_err
        best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    for _ in range(REFINE_STEPS):
        q = _quantize_rows(w, best, bits)
        qq = q.pow(2).sum(1)
        scale = _representable(torch.where(qq > 0, (w * q).sum(1) / qq.clamp_min(1), best))
        err = error(scale)
        better = err < best_err
        best, best_err = torch.where(better, scale, best), torch.where(better, err, best_err)
    return best.to(SCALE_DTYPE)


@dataclass
class QuantTensor:
    """One quantized weight: integers (int8 storage, any of the grid's widths) and channel scales."""

    bits: int
    q: torch.Tensor  # int8, the weight's shape
    scale: torch.Tensor  # SCALE_DTYPE, [out_channels]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``q * scale`` per output channel: the weight the deployed model computes with."""
        view = (-1,) + (1,) * (self.q.dim() - 1)
        return (self.q.to(dtype) * self.scale.to(dtype).view(view)).contiguous()


@dataclass
class QuantState:
    """What ``quantize`` did: the precision of every named layer and each quantized weight."""

    precisions: dict[str, str]
    tensors: dict[str, QuantTensor] = field(default_factory=dict)
    rule: str = DEFAULT_RULE

    @property
    def tensor_bits(self) -> dict[str, int]:
        """``{state-dict weight name: bits}`` (what ``pruning.memory.model_bytes`` counts)."""
        return {name: t.bits for name, t in self.tensors.items()}


def _specs(model: nn.Module, prune_embed: bool) -> list[LayerSpec]:
    """The layers of ``model``, pruned or not. A pruned model's layers and the modules they own are
    those of the model it was pruned from; its kept-index buffers and width-agnostic classes are the
    engine's bookkeeping, so the registry's coverage check runs on a copy without them."""
    if structure_of(model) is None:
        return layer_specs(model, prune_embed)
    original = {room.width_agnostic: cls for cls, room in ROOMS.items() if room.width_agnostic is not None}
    bare = copy.deepcopy(model)
    for module in bare.modules():
        module.__class__ = original.get(type(module), type(module))
        for buffer in (SCATTER_BUFFER, GATHER_BUFFER):
            module._buffers.pop(buffer, None)
    return layer_specs(bare, prune_embed)


def quantizable(model: nn.Module, prune_embed: bool = False) -> dict[str, tuple[str, ...]]:
    """Names a precision may be given for, each with the modules whose ``weight`` it quantizes:
    the prunable layers (their ``own`` modules), then every other Conv/Linear module (the head)."""
    specs = _specs(model, prune_embed)
    out = {s.name: s.own for s in specs}
    owned = {m for s in specs for m in s.own}
    for name, module in model.named_modules():
        if name and name not in owned and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            out.setdefault(name, (name,))
    return out


def tensor_bits(names: Mapping[str, tuple[str, ...]], precisions: Mapping[str, str | int]) -> dict[str, int]:
    """``{weight name: bits}`` for validated ``precisions`` over ``names`` (see ``quantizable``)."""
    out: dict[str, int] = {}
    for layer, value in precisions.items():
        if layer not in names:
            raise PrimeSVTError(f"unknown layer {layer!r} for a precision: give a prunable layer "
                                "(`primesvt info`) or a Conv/Linear module name such as the head")
        bits = GRID[parse_precision(value)]
        for module in names[layer]:
            tensor = f"{module}.weight"
            if tensor in out and out[tensor] != bits:
                raise PrimeSVTError(f"{tensor} is given two precisions ({layer!r} overlaps another layer)")
            if bits is not None:
                out[tensor] = bits
    return out


def _prune_embed(model: nn.Module) -> bool:
    structure = structure_of(model)
    return bool(structure and structure.get("prune_embed"))


def quantize(model: nn.Module, precisions: Mapping[str, str | int], *, engine: Engine | None = None,
             rule: str = DEFAULT_RULE) -> tuple[nn.Module, QuantState]:
    """A copy of ``model`` (pruned or not) whose named layers compute with dequantized weights.

    ``precisions``: ``{layer or module name: "float" | "int8" | "int4" | "int2"}``; missing
    layers stay float. ``engine``: the engine the rates came from (its unpruned model names the
    layers, which saves re-deriving them from a pruned copy). ``model`` is not modified.
    """
    if getattr(model, QUANT_ATTR, None) is not None:
        raise PrimeSVTError("this model is already quantized: quantize the float model it came from")
    names = quantizable(engine.model, engine.prune_embed) if engine is not None else quantizable(model, _prune_embed(model))
    bits = tensor_bits(names, precisions)
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    state = QuantState({k: parse_precision(v) for k, v in precisions.items()}, rule=rule)
    for name, b in bits.items():
        param = params[name]
        scale = fit_scales(param, b, rule)
        q = _quantize_rows(param.detach().reshape(param.shape[0], -1).double().cpu(), scale.double(), b)
        state.tensors[name] = QuantTensor(b, q.to(torch.int8).reshape(param.shape), scale)
        with torch.no_grad():
            param.copy_(state.tensors[name].dequantize(param.dtype))
    setattr(out, QUANT_ATTR, state)
    return out, state


def quant_state(model: nn.Module) -> QuantState | None:
    """The ``QuantState`` of a quantized model (``None`` for a float one)."""
    return getattr(model, QUANT_ATTR, None)


def predict_bytes(engine: Engine, rates: Mapping[str, float], precisions: Mapping[str, str | int]) -> int:
    """Exact bytes of the model pruned at ``rates`` and quantized at ``precisions``, from shapes
    alone (equals ``model_bytes`` of the quantized model and the exported artifact's payload)."""
    names = quantizable(engine.model, engine.prune_embed)
    return state_bytes(engine.pruned_shapes(rates), tensor_bits(names, precisions))


def memory_saving(engine: Engine, rates: Mapping[str, float], precisions: Mapping[str, str | int]) -> float:
    """Fraction of the float, unpruned model's bytes that ``rates`` plus ``precisions`` save."""
    return 1.0 - predict_bytes(engine, rates, precisions) / engine.base_bytes


def uniform(engine: Engine, precision: str | int) -> dict[str, str]:
    """The same precision for every prunable layer of ``engine``."""
    name = parse_precision(precision)
    return {layer: name for layer in engine.layers}


__all__ = [
    "FLOAT", "GRID", "QuantState", "QuantTensor", "fit_scales", "memory_saving", "parse_grid", "parse_precision",
    "predict_bytes", "quant_state", "quantizable", "quantize", "tensor_bits", "uniform",
]
