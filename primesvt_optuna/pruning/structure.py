"""Channel surgery: turn a *structure* (kept channels per layer group) into a smaller dense model.

The same code prunes a trained model (``Engine.prune`` computes the kept channels from the
weights, then calls ``apply_structure``) and rebuilds a saved pruned model (a fresh model of the
original config gets the saved structure, then ``load_state_dict``). A structure is plain JSON::

    {"prune_embed": false, "layers": {"block.0.mlp.fc1_linear": [[0, 2, 3, ...]], ...}}

Residual writers compute only their kept channels; a forward hook writes them into the
full-width stream by index (``index_copy_`` into zeros, then the model's own ``x + branch``), and
a forward pre-hook gathers them back where a pruned consumer reads the stream. The index tensors
are persistent buffers, so they are saved, loaded and counted in the model's bytes.

A model whose forward pass adds the kept channels into the stream itself can skip that detour:
this package's Spikformer marks its residual branches with ``models.spikformer.index_writes_here``
and adds each one with ``stream.index_add(dim, index, branch)`` (no zero tensor, no full-width
scatter and add); inside such a branch the hooks pass the kept channels through unchanged. Code
that calls a branch on its own (the robustness sweep's stages, spikingjelly's Spikformer) still
gets the full-width output from the hooks; both give bit-identical results (``tests/test_flops.py``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn as nn

from ..errors import PrimeSVTError
from ..models.spikformer import SCATTER_INDEX, index_writes_here
from .adapters import layer_specs, make_width_agnostic
from .spec import Cut, LayerSpec

SCATTER_BUFFER = SCATTER_INDEX  # "primesvt_scatter_index"
GATHER_BUFFER = "primesvt_gather_index"
INDEX_DTYPE = torch.int64

# Which tensors of a module each cut kind slices, and along which axis.
CUT_TENSORS: dict[str, tuple[tuple[str, int], ...]] = {
    "out": (("weight", 0), ("bias", 0)),
    "in": (("weight", 1),),
    "norm": (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    "depthwise": (("weight", 0), ("bias", 0)),
}
_SIZE_ATTRS = {"out": ("out_channels", "out_features"), "in": ("in_channels", "in_features"), "norm": ("num_features",),
               "depthwise": ("in_channels", "out_channels", "groups")}


class ScatterHook:
    """Forward hook: the module's kept channels, written by index into a zero tensor of ``width``."""

    def __init__(self, dim: int, width: int) -> None:
        self.dim, self.width = dim, width

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if index_writes_here():  # the model's forward adds the kept channels into the stream itself
            return output
        shape = list(output.shape)
        shape[self.dim] = self.width
        return output.new_zeros(shape).index_copy_(self.dim, getattr(module, SCATTER_BUFFER), output)


class GatherHook:
    """Forward pre-hook: the kept channels of the module's full-width input."""

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        if index_writes_here():  # the model passes the kept channels already
            return args
        return (args[0].index_select(self.dim, getattr(module, GATHER_BUFFER)), *args[1:])


def structure_of(model: nn.Module) -> dict[str, Any] | None:
    """The structure a pruned model was built with (``None`` for an unpruned model)."""
    return getattr(model, "primesvt_structure", None)


def _slice(module: nn.Module, kind: str, keep: torch.Tensor) -> None:
    for attr, axis in CUT_TENSORS[kind]:
        tensor = getattr(module, attr, None)
        if tensor is None:
            continue
        new = tensor.detach().index_select(axis, keep.to(tensor.device)).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(module, attr, nn.Parameter(new, requires_grad=tensor.requires_grad))
        else:
            setattr(module, attr, new)
    for attr in _SIZE_ATTRS[kind]:
        if hasattr(module, attr):
            setattr(module, attr, int(keep.numel()))


def _register_index(module: nn.Module, buffer: str, kept: list[int], device: torch.device) -> None:
    if hasattr(module, buffer):
        raise PrimeSVTError(f"two layer groups write {buffer} on one module: the family adapter is inconsistent")
    module.register_buffer(buffer, torch.tensor(kept, dtype=INDEX_DTYPE, device=device))


def apply_structure(model: nn.Module, structure: dict[str, Any]) -> nn.Module:
    """Remove every channel the structure does not keep, in place; returns ``model``."""
    if structure_of(model) is not None:
        raise PrimeSVTError("this model is already pruned: prune the original (unpruned) checkpoint instead")
    specs = {s.name: s for s in layer_specs(model, bool(structure.get("prune_embed", False)))}
    make_width_agnostic(model)
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    removed: dict[tuple[str, str], set[int]] = defaultdict(set)
    for name, kept_groups in structure["layers"].items():
        spec = specs.get(name)
        if spec is None:
            raise PrimeSVTError(f"structure names unknown layer {name!r}: it was saved for another model layout")
        if len(kept_groups) != len(spec.groups):
            raise PrimeSVTError(f"structure of layer {name!r} has {len(kept_groups)} groups, expected {len(spec.groups)}")
        for group, kept in zip(spec.groups, kept_groups):
            gone = set(range(group.channels)) - set(kept)
            for cut in group.cuts:
                removed[(cut.module, cut.kind)].update(cut.offset + c for c in gone)
            for site in group.scatter:
                _register_index(modules[site.module], SCATTER_BUFFER, kept, device)
                modules[site.module].register_forward_hook(ScatterHook(site.dim, group.channels))
            for site in group.gather:
                _register_index(modules[site.module], GATHER_BUFFER, kept, device)
                modules[site.module].register_forward_pre_hook(GatherHook(site.dim))
    for (module_name, kind), gone in removed.items():
        module = modules[module_name]
        size = module.weight.shape[1 if kind == "in" else 0]
        keep = torch.tensor(sorted(set(range(size)) - gone), dtype=torch.long)
        _slice(module, kind, keep)
    model.primesvt_structure = {"prune_embed": bool(structure.get("prune_embed", False)),
                                "layers": {k: [list(map(int, g)) for g in v] for k, v in structure["layers"].items()}}
    return model


def cut_tensors(spec: LayerSpec, model_state: dict[str, torch.Tensor]) -> list[tuple[Cut, str, int]]:
    """Every (cut, state-dict tensor name, axis) a layer's channels live in."""
    out = []
    for group in spec.groups:
        for cut in group.cuts:
            for attr, axis in CUT_TENSORS[cut.kind]:
                name = f"{cut.module}.{attr}"
                if name in model_state:
                    out.append((cut, name, axis))
    return out
