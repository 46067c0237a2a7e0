"""Membrane-potential drift: how far quantizing one layer moves the inputs of the network's spiking
neurons, the proxy AQ4SViT (arXiv 2606.15523) ranks its per-layer precision steps by.

AQ4SViT gates its candidates by the drift of membrane potentials without publishing the formula;
here the drift of a layer at a precision is the relative squared change of every spiking neuron's
input (the charge added to its membrane potential, all time steps), summed over the neurons:
``sum ||x_q - x_f||^2 / sum ||x_f||^2``, with only that layer quantized, on a fixed batch of
images. Forward passes only; neuron state is reset around every pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron

from ..pruning.engine import Engine
from .quant import FLOAT, quantize


@contextmanager
def _neuron_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collects the input of every spiking neuron module, in call order, while inside."""
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().double()))
             for m in model.modules() if isinstance(m, neuron.BaseNode)]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _inputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    model.eval()
    with _neuron_inputs(model) as seen, torch.inference_mode():
        functional.reset_net(model)
        model(images)
        functional.reset_net(model)
    return seen


def membrane_drift(engine: Engine, images: torch.Tensor, precisions: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{layer: {precision: drift}}`` for every prunable layer of ``engine`` (unpruned) alone at
    each quantized precision of ``precisions`` (float drifts 0 and is left out)."""
    reference = _inputs(engine.model, images)
    scale = sum(float(x.pow(2).sum()) for x in reference) or 1.0
    out: dict[str, dict[str, float]] = {}
    for layer in engine.layers:
        out[layer] = {}
        for precision in precisions:
            if precision == FLOAT:
                continue
            qmodel, _ = quantize(engine.model, {layer: precision}, engine=engine)
            moved = _inputs(qmodel, images)
            out[layer][precision] = sum(float((q - f).pow(2).sum()) for q, f in zip(moved, reference)) / scale
    return out


__all__ = ["membrane_drift"]
