"""The pruning engine: what a rate vector means, what it saves, and the pruned model itself.

Example:
    >>> from primesvt_optuna.models import build_model
    >>> from primesvt_optuna.pruning import Engine, model_bytes
    >>> model = build_model({"preset": "digits-tiny"})
    >>> engine = Engine(model)
    >>> rates = {engine.layers[0]: 0.5}
    >>> pruned = engine.prune(rates)
    >>> engine.predict_bytes(rates) == model_bytes(pruned)
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import pandas as pd
import torch
import torch.nn as nn

from ..errors import PrimeSVTError
from .adapters import layer_specs
from .memory import QUANT_ATTR, model_bytes, state_bytes
from .spec import ChannelGroup, LayerSpec
from .structure import GATHER_BUFFER, INDEX_DTYPE, SCATTER_BUFFER, apply_structure, cut_tensors, structure_of

ENGINE_VERSION = "1"
_EPS = 1e-9


def removed_per_head(group: ChannelGroup, rate: float) -> int:
    """Channels removed from each head: ``floor(rate * per_head + 1e-9)`` (plain floor of 0.7*90 is 62)."""
    return math.floor(rate * (group.channels // group.heads) + _EPS)


class Engine:
    """Layer inventory, exact memory prediction and L2-norm filter pruning for one model.

    Layers are sorted from largest to smallest by their own parameter count (the Conv/Linear
    weights and biases whose output channels the layer removes); ties keep network order.
    """

    def __init__(self, model: nn.Module, prune_embed: bool = False) -> None:
        if getattr(model, QUANT_ATTR, None) is not None:
            raise PrimeSVTError("this model is quantized: prune and search the float checkpoint it came from, "
                                "then quantize the selection")
        if structure_of(model) is not None:
            raise PrimeSVTError("this model is already pruned: build the engine on the original (unpruned) model")
        self.model = model
        self.prune_embed = prune_embed
        specs = layer_specs(model, prune_embed)
        if not specs:
            raise PrimeSVTError(f"{type(model).__name__} has no prunable layers")
        modules = self._modules = dict(model.named_modules())
        self._state = {k: (tuple(v.shape), v.element_size()) for k, v in model.state_dict().items()}
        self.base_bytes = sum(math.prod(s) * i for s, i in self._state.values())
        self.layer_params = {
            s.name: sum(p.numel() for m in s.own for p in modules[m].parameters(recurse=False)) for s in specs
        }
        order = {s.name: i for i, s in enumerate(specs)}
        self.specs = {s.name: s for s in sorted(specs, key=lambda s: (-self.layer_params[s.name], order[s.name]))}
        self.layers = list(self.specs)
        self._cuts = {name: cut_tensors(spec, model.state_dict()) for name, spec in self.specs.items()}

    # ----------------------------------------------------------------- rates
    def check_rates(self, rates: Mapping[str, float]) -> dict[str, float]:
        """Validated rates (unknown layers, rates outside [0, 1) or removing every channel are errors)."""
        out = {}
        for name, rate in rates.items():
            if name not in self.specs:
                raise PrimeSVTError(f"unknown layer {name!r}: run `primesvt info` for the prunable layers of this model")
            rate = float(rate)
            if not (0.0 <= rate < 1.0) or math.isnan(rate):
                raise PrimeSVTError(f"rate {rate} for layer {name!r} is outside [0, 1)")
            for group in self.specs[name].groups:
                if removed_per_head(group, rate) >= group.channels // group.heads:
                    raise PrimeSVTError(f"rate {rate} would remove every channel of layer {name!r}")
            out[name] = rate
        return out

    def removed(self, rates: Mapping[str, float]) -> dict[str, list[int]]:
        """Channels each layer's groups lose at these rates (layers with no removal omitted)."""
        rates = self.check_rates(rates)
        out = {}
        for name, rate in rates.items():
            counts = [removed_per_head(g, rate) * g.heads for g in self.specs[name].groups]
            if any(counts):
                out[name] = counts
        return out

    # ---------------------------------------------------------------- memory
    def pruned_shapes(self, rates: Mapping[str, float]) -> dict[str, tuple[tuple[int, ...], int]]:
        """``{state-dict name: (shape, itemsize)}`` of the pruned model, kept-index buffers included,
        computed from shapes alone (what ``predict_bytes`` and the precision package count)."""
        shapes = {k: list(s) for k, (s, _) in self._state.items()}
        index_item = torch.tensor([], dtype=INDEX_DTYPE).element_size()
        out: dict[str, tuple[tuple[int, ...], int]] = {}
        for name, counts in self.removed(rates).items():
            spec = self.specs[name]
            for group, count in zip(spec.groups, counts):
                for site, buffer in [(s, SCATTER_BUFFER) for s in group.scatter] + [(s, GATHER_BUFFER) for s in group.gather]:
                    out[f"{site.module}.{buffer}"] = ((group.channels - count,), index_item)
            for cut, tensor, axis in self._cuts[name]:
                group_count = next(c for g, c in zip(spec.groups, counts) if cut in g.cuts)
                shapes[tensor][axis] -= group_count
        return {**{k: (tuple(shapes[k]), item) for k, (_, item) in self._state.items()}, **out}

    def predict_bytes(self, rates: Mapping[str, float]) -> int:
        """Model bytes of the pruned model, computed from shapes alone (equals the measured bytes)."""
        return state_bytes(self.pruned_shapes(rates))

    def memory_saving(self, rates: Mapping[str, float]) -> float:
        """Fraction of the model's bytes these rates save."""
        return 1.0 - self.predict_bytes(rates) / self.base_bytes

    # --------------------------------------------------------------- pruning
    def _norms(self, group: ChannelGroup) -> torch.Tensor:
        total = torch.zeros(group.channels, dtype=torch.float64)
        for cut in group.rank:
            w = self._modules[cut.module].weight.detach()[cut.offset : cut.offset + group.channels]
            total += w.reshape(group.channels, -1).double().pow(2).sum(1).cpu()
        return total.sqrt()

    def plan(self, rates: Mapping[str, float]) -> dict:
        """The structure (kept channels per group) that pruning at ``rates`` produces.

        In each head, the ``removed_per_head`` filters with the smallest L2 norm go (ties: the
        lower channel index goes first).
        """
        layers = {}
        for name, counts in self.removed(rates).items():
            kept_groups = []
            for group, count in zip(self.specs[name].groups, counts):
                per_head = group.channels // group.heads
                r = count // group.heads
                norms = self._norms(group)
                kept = []
                for h in range(group.heads):
                    block = norms[h * per_head : (h + 1) * per_head]
                    order = torch.argsort(block, stable=True)
                    kept += sorted(int(i) + h * per_head for i in order[r:])
                kept_groups.append(kept)
            layers[name] = kept_groups
        return {"prune_embed": self.prune_embed, "layers": layers}

    def prune(self, rates: Mapping[str, float]) -> nn.Module:
        """A new, physically smaller model; the engine's model is not modified."""
        structure = self.plan(rates)
        return apply_structure(copy.deepcopy(self.model), structure)

    # ------------------------------------------------------------- inventory
    @property
    def table(self) -> pd.DataFrame:
        """One row per prunable layer, largest first: its size and everything that changes with it."""
        rows = []
        for name, spec in self.specs.items():
            group_bytes = sum(
                math.prod(self._state[t][0]) // self._state[t][0][axis] * self._state[t][1]
                * next(g.channels for g in spec.groups if cut in g.cuts)
                for cut, t, axis in self._cuts[name]
            )
            itemsize = self._state[f"{spec.own[0]}.weight"][1]
            rows.append({
                "layer": name,
                "role": spec.role,
                "params": self.layer_params[name],
                "bytes": self.layer_params[name] * itemsize,
                "channels": sum(g.channels for g in spec.groups),
                "heads": spec.groups[0].heads,
                "group_bytes": group_bytes,
                "group": ", ".join(dict.fromkeys(f"{c.module}.{c.kind}" for g in spec.groups for c in g.cuts)),
            })
        return pd.DataFrame(rows)


def prune(model: nn.Module, rates: Mapping[str, float], prune_embed: bool = False) -> nn.Module:
    """``Engine(model).prune(rates)``: a new, physically smaller model."""
    return Engine(model, prune_embed).prune(rates)


def check_predicted(engine: Engine, rates: Mapping[str, float], pruned: nn.Module) -> None:
    """Raise if the predicted bytes differ from the measured ones (a broken adapter)."""
    predicted, measured = engine.predict_bytes(rates), model_bytes(pruned)
    if predicted != measured:
        raise AssertionError(f"predicted {predicted} bytes, measured {measured}")


__all__ = ["ENGINE_VERSION", "Engine", "LayerSpec", "check_predicted", "prune", "removed_per_head"]
