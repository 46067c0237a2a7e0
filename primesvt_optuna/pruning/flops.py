"""FLOPs per image: counted with ``torch.utils.flop_counter.FlopCounterMode``, predicted before pruning.

What is counted is what ``FlopCounterMode`` counts: convolutions and matrix products (``mm``,
``addmm``, ``bmm``, ``matmul``, attention), two FLOPs per multiply-add, biases left out. Not
counted, because the counter has no formula for them: the spiking neurons (LIF charge, fire and
reset at every time step), BatchNorm, pooling, the residual adds and the engine's index
scatter/gather, and every other elementwise operator. In a Spikformer these scale with the kept
channels (linearly), whereas a convolution or projection whose inputs and outputs both lose
channels scales with their product, so a FLOP ratio is an upper bound on the speed-up that
pruning can buy; ``benchmarks/bench_pruning.py`` measures how close it comes.

"FLOPs per image" is one forward pass on a batch of one image, all ``T`` time steps included
(every counted operator is linear in the batch).

Prediction (:class:`FlopsPredictor`) is exact and needs neither weights nor data nor a forward
pass per prediction: the counts of a few pruned copies on PyTorch's ``meta`` device (shapes only,
no arithmetic), made once, fix every module's FLOPs as a function of the channels each layer
removes (see the class), and a prediction is then arithmetic (well under a millisecond; setup
0.5-3 s). ``tests/test_flops.py`` checks ``predict(rates) == count_flops(engine.prune(rates))``.

Example:
    >>> from primesvt_optuna.models import build_model
    >>> from primesvt_optuna.pruning import Engine
    >>> engine = Engine(build_model({"preset": "digits-tiny"}))
    >>> flops = FlopsPredictor(engine, (1, 16, 16))
    >>> rates = {engine.layers[0]: 0.5}
    >>> flops.predict(rates) == count_flops(engine.prune(rates), (1, 16, 16))
    True
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from torch.utils.flop_counter import FlopCounterMode

from ..errors import PrimeSVTError
from .engine import Engine
from .structure import apply_structure, structure_of

__all__ = ["NOT_COUNTED", "FlopsPredictor", "check_predicted_flops", "count_flops", "meta_copy"]

NOT_COUNTED = ("spiking neurons", "BatchNorm", "pooling", "residual adds", "index scatter/gather",
               "other elementwise operators")
"""What ``FlopCounterMode`` leaves out of every count here (it has no formula for them)."""


def _param(model: nn.Module) -> torch.Tensor:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    if tensor is None:
        raise PrimeSVTError(f"{type(model).__name__} has no parameters: nothing to count FLOPs of")
    return tensor


def count_flops(model: nn.Module, image_shape: Sequence[int], *, batch_size: int = 1) -> int:
    """FLOPs per image of one forward pass, as ``FlopCounterMode`` counts them.

    ``image_shape`` is ``(C, H, W)``; the input is zeros on the model's device and dtype (any
    values give the same count). Neuron state is reset before and after; the model's
    train/eval mode is left as it is.
    """
    if batch_size < 1:
        raise PrimeSVTError(f"batch_size must be at least 1, got {batch_size}")
    ref = _param(model)
    x = torch.zeros((batch_size, *image_shape), dtype=ref.dtype if ref.is_floating_point() else torch.float32,
                    device=ref.device)
    total = int(_counted(model, x).get_total_flops())
    if total % batch_size:
        raise AssertionError(f"{total} FLOPs for a batch of {batch_size} is not a whole number per image")
    return total // batch_size


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the ``meta`` device (shapes and
    dtypes only: copying allocates nothing, and a forward pass does no arithmetic)."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(
            tensor, nn.Parameter) else meta
    out = copy.deepcopy(model, memo)
    functional.reset_net(out)  # a tensor-valued neuron state was copied as it was: start clean
    return out


class _Same(nn.Module):
    """Stands in for a BatchNorm on the meta copy: FlopCounterMode counts nothing for it, and
    on ``meta`` PyTorch runs BatchNorm as a slow Python decomposition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _without_norms(model: nn.Module) -> nn.Module:
    """``model`` (a meta copy) with every hook-free BatchNorm replaced by the identity, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not (
                module._forward_hooks or module._forward_pre_hooks):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, _Same())
    return model


def _counted(model: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    """One forward pass of ``x`` under a FLOP counter, neuron state reset before and after."""
    functional.reset_net(model)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        functional.reset_net(model)
    return counter


def _module_flops(model: nn.Module, image_shape: Sequence[int]) -> dict[str, int]:
    """FLOPs per image by module path ("" the root), totals including submodules (batch of one)."""
    ref = _param(model)
    counter = _counted(model, torch.zeros((1, *image_shape), dtype=ref.dtype, device=ref.device))
    root = type(model).__name__
    out = {}
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            out["<total>"] = int(sum(ops.values()))
        elif key == root or key.startswith(root + "."):
            out[key[len(root) + 1:]] = int(sum(ops.values()))
    return out


_LEAVES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _lagrange(degree: int, j: int, r: int) -> Fraction:
    """The Lagrange basis polynomial of node ``j`` on the nodes ``0..degree``, at ``r``."""
    out = Fraction(1)
    for m in range(degree + 1):
        if m != j:
            out *= Fraction(r - m, j - m)
    return out


class FlopsPredictor:
    """Exact FLOPs per image of the model an :class:`Engine` would prune at given rates.

    Calibrated once from a few counts on a ``meta`` copy, then pure arithmetic (microseconds):

    * a convolution or linear layer's FLOPs are ``c * inputs * outputs`` (``c``: 2 x positions x
      kernel size, unchanged by pruning), with the inputs and outputs the engine's cuts leave;
    * any other counted operator sits in a module's own ``forward`` (the attention products of
      ``q @ k^T @ v``); its FLOPs depend on the widths of the channel groups cut inside that
      module and are multilinear in them (``T N D_qk D_v / heads``, or ``T N^2 (D_qk + D_v)``),
      so counting each module at every combination of those groups at full width and one
      channel per head less (``2^k`` probes, the probes of different modules shared) fixes them.

    Two seeded random rate vectors check the arithmetic against the counter at construction;
    should a model not fit this form (another family, a grouped convolution), every prediction
    is counted on a pruned ``meta`` copy instead (``analytic`` is then False): slower, as exact.

    Args:
        engine: the engine of the unpruned model.
        image_shape: ``(C, H, W)`` of one input image.
        cache_size: how many counted predictions are kept (keyed by the removed channel counts).
    """

    def __init__(self, engine: Engine, image_shape: Sequence[int], cache_size: int = 4096) -> None:
        self.engine = engine
        self.image_shape = tuple(int(s) for s in image_shape)
        self._meta = meta_copy(engine.model)
        self._cache: OrderedDict[tuple, int] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # an objective's trials may run in threads (n_jobs)
        base = _module_flops(_without_norms(meta_copy(self._meta)), self.image_shape)
        self.base_flops = base["<total>"]
        if self.base_flops <= 0:
            raise PrimeSVTError(f"{type(engine.model).__name__} has no operator FlopCounterMode counts")
        self.analytic = self._calibrate(base)

    # ----- calibration ------------------------------------------------------------------------------
    def _calibrate(self, base: dict[str, int]) -> bool:
        specs = self.engine.specs
        # one variable per layer: channels removed per head (the engine removes as many from every
        # group of a layer; a layer whose groups differ in size or heads is not supported)
        for spec in specs.values():
            if len({(g.channels, g.heads) for g in spec.groups}) != 1:
                return False
        modules = dict(self.engine.model.named_modules(remove_duplicate=False))
        children = {name: [f"{name}.{c}" if name else c for c, _ in m.named_children()] for name, m in modules.items()}

        def total(counts: dict[str, int], name: str) -> int:  # a container never called has no entry
            return counts[name] if name in counts else sum(total(counts, c) for c in children[name])

        def own_flops(counts: dict[str, int], name: str) -> int:
            return counts.get(name, 0) - sum(total(counts, c) for c in children[name]) if name in counts else 0

        self._leaves: dict[str, list[int]] = {}  # module -> [c, inputs, outputs]
        composite: dict[str, dict[str, int]] = {}  # module -> {layer: degree}
        for name in modules:
            flops = own_flops(base, name)
            if flops == 0:
                continue
            m = modules[name]
            weight = getattr(m, "weight", None)
            if (isinstance(m, _LEAVES) and not children[name] and getattr(m, "groups", 1) == 1
                    and weight is not None and weight.dim() >= 2 and flops % (weight.shape[0] * weight.shape[1]) == 0):
                self._leaves[name] = [flops // (weight.shape[0] * weight.shape[1]), weight.shape[1], weight.shape[0]]
                continue
            inside = lambda module: not name or module == name or module.startswith(name + ".")  # noqa: E731
            composite[name] = {layer: degree for layer, spec in specs.items()
                               if (degree := sum(any(inside(c.module) for c in g.cuts) for g in spec.groups))}
        # every cut of a leaf's inputs or outputs: (module, 1 = inputs / 2 = outputs, heads)
        self._cuts: dict[str, list[tuple[str, int, int]]] = {}
        for layer, spec in specs.items():
            for g in spec.groups:
                for cut in g.cuts:
                    if cut.module in self._leaves and cut.kind in ("in", "out"):
                        self._cuts.setdefault(layer, []).append((cut.module, 1 if cut.kind == "in" else 2, g.heads))
        # colour the layers so that the layers of one composite module differ; probe every
        # combination of 0..degree channels per head removed over the colours
        colour: dict[str, int] = {}
        for touching in composite.values():
            used = {colour[layer] for layer in touching if layer in colour}
            for layer in touching:
                if layer not in colour:
                    colour[layer] = next(c for c in range(len(colour) + 1) if c not in used)
                    used.add(colour[layer])
            if len({colour[layer] for layer in touching}) != len(touching):
                return False
        degree = [0] * (max(colour.values(), default=-1) + 1)
        for touching in composite.values():
            for layer, d in touching.items():
                degree[colour[layer]] = max(degree[colour[layer]], d)
        for layer, c in colour.items():
            g = specs[layer].groups[0]
            if degree[c] >= g.channels // g.heads:
                return False  # too few channels per head to probe
        grid = list(itertools.product(*[range(d + 1) for d in degree]))
        if len(grid) > 64:
            return False
        probes = {}
        for levels in grid:
            if not any(levels):
                probes[levels] = base
                continue
            removed = {layer: [levels[c] * g.heads for g in specs[layer].groups] for layer, c in colour.items() if levels[c]}
            model = apply_structure(meta_copy(self._meta), self._structure(removed))
            probes[levels] = _module_flops(_without_norms(model), self.image_shape)
        self._composite = {}
        for name, touching in composite.items():
            layers = list(touching)
            corners = {}
            for combo in itertools.product(*[range(touching[layer] + 1) for layer in layers]):
                levels = [0] * len(degree)
                for layer, level in zip(layers, combo):
                    levels[colour[layer]] = level
                corners[combo] = own_flops(probes[tuple(levels)], name)
            self._composite[name] = ([(layer, touching[layer]) for layer in layers], corners)
        rng = random.Random(0)
        for _ in range(2):
            rates = {layer: rng.choice([0.0, 0.1, 0.3, 0.5, 0.7]) for layer in specs}
            if self._arithmetic(self.engine.removed(rates)) != self._count(rates):
                return False
        return True

    # ----- prediction -------------------------------------------------------------------------------
    def _arithmetic(self, removed: Mapping[str, list[int]]) -> int:
        specs = self.engine.specs
        per_head = {layer: counts[0] // specs[layer].groups[0].heads for layer, counts in removed.items()}
        sizes = {name: list(v) for name, v in self._leaves.items()}
        for layer, r in per_head.items():
            for module, axis, heads in self._cuts.get(layer, ()):
                sizes[module][axis] -= r * heads
        total = sum(c * inputs * outputs for c, inputs, outputs in sizes.values())
        for layers, corners in self._composite.values():
            # Lagrange interpolation on 0..degree in each layer's channels removed per head
            basis = [[_lagrange(d, j, per_head.get(layer, 0)) for j in range(d + 1)] for layer, d in layers]
            value = Fraction(0)
            for combo, corner in corners.items():
                weight = Fraction(1)
                for b, j in zip(basis, combo):
                    weight *= b[j]
                value += weight * corner
            if value.denominator != 1:
                raise AssertionError("the FLOPs of a module did not come out whole")
            total += int(value)
        return total

    def _count(self, rates: Mapping[str, float]) -> int:
        removed = self.engine.removed(rates)
        if not removed:
            return self.base_flops
        model = apply_structure(meta_copy(self._meta), self._structure(removed))
        return count_flops(_without_norms(model), self.image_shape)

    def _structure(self, removed: Mapping[str, list[int]]) -> dict[str, Any]:
        layers = {}
        for name, counts in removed.items():
            kept_groups = []
            for group, count in zip(self.engine.specs[name].groups, counts):
                per_head, gone = group.channels // group.heads, count // group.heads
                kept_groups.append([h * per_head + c for h in range(group.heads) for c in range(per_head - gone)])
            layers[name] = kept_groups
        return {"prune_embed": self.engine.prune_embed, "layers": layers}

    def structure(self, rates: Mapping[str, float]) -> dict[str, Any]:
        """A structure with the channel counts ``rates`` remove (the first channels of each head kept)."""
        return self._structure(self.engine.removed(rates))

    def predict(self, rates: Mapping[str, float]) -> int:
        """FLOPs per image of ``engine.prune(rates)`` (equal to ``count_flops`` of that model)."""
        if self.analytic:
            return self._arithmetic(self.engine.removed(rates))
        removed = self.engine.removed(rates)
        key = tuple(sorted((name, tuple(counts)) for name, counts in removed.items()))
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        value = self._count(rates)
        with self._lock:
            self._cache[key] = value
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return value

    def saving(self, rates: Mapping[str, float]) -> float:
        """Fraction of the unpruned model's FLOPs these rates save."""
        return 1.0 - self.predict(rates) / self.base_flops

    def ratio(self, rates: Mapping[str, float]) -> float:
        """Unpruned FLOPs over pruned FLOPs (the speed-up the counted operators alone would give)."""
        return self.base_flops / self.predict(rates)


def check_predicted_flops(predictor: FlopsPredictor, rates: Mapping[str, float], pruned: nn.Module) -> None:
    """Raise if the predicted FLOPs differ from the ones counted on the pruned model."""
    if structure_of(pruned) is None and predictor.engine.removed(rates):
        raise PrimeSVTError("check_predicted_flops needs the pruned model, got an unpruned one")
    predicted, counted = predictor.predict(rates), count_flops(pruned, predictor.image_shape)
    if predicted != counted:
        raise AssertionError(f"predicted {predicted} FLOPs per image, counted {counted}")

