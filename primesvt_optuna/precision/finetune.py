"""Fine-tuning with the quantizer in the loop (straight-through estimator).

During training every quantized weight is a float *latent* tensor that the forward pass rounds to
its precision (``w + (quantize(w) - w).detach()``: the loss sees the quantized model, the gradient
reaches the latent weight unchanged). Afterwards the latent weights are rounded once more and the
model is again an exact quantized model with the same precisions and the same bytes.

``scales="fixed"`` keeps each channel's searched scale and re-rounds only the integers;
``"refit"`` re-chooses the scale with the model's clip rule at every step (slower; see
docs/precision.md for the measured comparison).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from ..data import Splits
from ..errors import PrimeSVTError
from ..pruning.memory import QUANT_ATTR, SCALE_DTYPE
from ..training import finetune
from .quant import QuantState, QuantTensor, fit_scales, qmax

SCALES = ("fixed", "refit")


def _round(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    view = (-1,) + (1,) * (w.dim() - 1)
    return torch.clamp(torch.round(w.detach() / scale.to(w.dtype).view(view)), -qmax(bits), qmax(bits))


class _FakeQuant(nn.Module):
    """Parametrization: the latent weight as the quantized model computes with it, identity gradient."""

    def __init__(self, qt: QuantTensor, rule: str, refit: bool) -> None:
        super().__init__()
        self.bits, self.rule, self.refit = qt.bits, rule, refit
        self.register_buffer("scale", qt.scale.clone(), persistent=False)

    def current_scale(self, w: torch.Tensor) -> torch.Tensor:
        return fit_scales(w, self.bits, self.rule).to(w.device) if self.refit else self.scale.to(w.device)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        scale = self.current_scale(w)
        view = (-1,) + (1,) * (w.dim() - 1)
        quantized = _round(w, scale, self.bits) * scale.to(w.dtype).view(view)
        return w + (quantized - w).detach()


@contextmanager
def _fake_quant(model: nn.Module, state: QuantState, scales: str) -> Iterator[None]:
    """Weights of ``state`` fake-quantized while inside; on exit the model is exactly quantized again
    (latent weights rounded, new ``QuantState`` attached), also when training raised."""
    modules = dict(model.named_modules())
    hooks = {}
    for name, qt in state.tensors.items():
        module_name, _, attr = name.rpartition(".")
        hooks[name] = _FakeQuant(qt, state.rule, scales == "refit")
        parametrize.register_parametrization(modules[module_name], attr, hooks[name])
    try:
        yield
    finally:
        new = QuantState(dict(state.precisions), rule=state.rule)
        for name, fq in hooks.items():
            module_name, _, attr = name.rpartition(".")
            module = modules[module_name]
            latent = module.parametrizations[attr].original.detach()
            scale = fq.current_scale(latent).to(SCALE_DTYPE)
            qt = QuantTensor(fq.bits, _round(latent, scale, fq.bits).to(torch.int8).cpu(), scale.cpu())
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
            with torch.no_grad():
                getattr(module, attr).copy_(qt.dequantize(latent.dtype))
            new.tensors[name] = qt
        setattr(model, QUANT_ATTR, new)


def finetune_quantized(model: nn.Module, splits: Splits, *, scales: str = "fixed", **kwargs: Any) -> dict[str, Any]:
    """``training.finetune`` of a quantized model (``quantize``'s output) with the quantizer in the
    loop; afterwards ``model`` is an exact quantized model with the same precisions and bytes.
    ``kwargs`` go to ``training.finetune`` (epochs, lr, seed, device, keep, ...)."""
    state: QuantState | None = getattr(model, QUANT_ATTR, None)
    if state is None:
        raise PrimeSVTError("this model is not quantized: quantize it first, or fine-tune it with training.finetune")
    if scales not in SCALES:
        raise PrimeSVTError(f"scales must be one of {', '.join(SCALES)}, got {scales!r}")
    with _fake_quant(model, state, scales):
        return finetune(model, splits, **kwargs)


__all__ = ["SCALES", "finetune_quantized"]
