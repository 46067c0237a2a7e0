"""Which modules form which prunable layer: one *room* per module class, found by walking the model.

A room (``Room``) describes how one module class is pruned, as data in the vocabulary of
``spec.py``: the layers it owns (channel groups with their cuts, mask sites, scatters and
gathers), the modules it leaves unpruned on purpose (a classification head), and, where the
class's ``forward`` reads a width from its constructor, a subclass whose ``forward`` reads it from
the tensors (swapped in on the pruned copy only). The built-in rooms live in ``families/``, one
module per model family; ``register`` adds a user's.

``layer_specs`` walks the module tree from the root: a module whose exact class has a room is
described by it (and, for a room with ``descend=True``, its children are walked too); any other
module's children are walked. Every module that holds parameters or buffers must end up in a
layer's cuts or in a room's ``keep`` (single numbers, such as a parametric neuron's time constant,
have no channel and need neither); the first one that does not is named in a ``PrimeSVTError``,
so a model part no rule understands is never silently left out or pruned wrong.

Why this is exact wherever a room is used: a branch whose outputs are cut writes its kept
channels back at full width by index (``scatter``, zeros elsewhere), which is what the masked
reference computes whatever reads that output; so a room needs to know only its own class's
``forward``, never the model around it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch.nn as nn

from ..errors import PrimeSVTError
from .spec import LayerSpec

Describe = Callable[[nn.Module, bool], list[LayerSpec]]
HELP = "see docs/engine.md, 'Bring your own SViT'"


@dataclass(frozen=True)
class Room:
    """How one module class is pruned.

    ``layers(module, prune_embed)``: its layers, module names relative to ``module`` (the walk
    prefixes them with the module's name in the model); ``keep``: descendants left unpruned on purpose (relative names);
    ``descend``: walk the children too (rooms that describe only part of their subtree);
    ``prune_embed``: the room can prune the embedding dimension as one global group;
    ``width_agnostic``: a subclass computing the same function with widths read from the tensors.
    """

    layers: Describe
    keep: tuple[str, ...] = ()
    descend: bool = False
    prune_embed: bool = False
    width_agnostic: type[nn.Module] | None = None


ROOMS: dict[type, Room] = {}


def register(cls: type, room: Room) -> None:
    """Prune every module of exactly this class with ``room`` (replaces an earlier registration)."""
    ROOMS[cls] = room


def room_of(module: nn.Module) -> Room | None:
    """The room of the module's exact class (a subclass may compute something else: no room)."""
    return ROOMS.get(type(module))


def with_prefix(spec: LayerSpec, prefix: str) -> LayerSpec:
    """``spec`` with every module name (and the layer name) under ``prefix``."""
    if not prefix:
        return spec
    cuts = lambda items: tuple(replace(c, module=prefix + c.module) for c in items)  # noqa: E731
    groups = tuple(replace(g, rank=cuts(g.rank), cuts=cuts(g.cuts), mask=cuts(g.mask), scatter=cuts(g.scatter),
                           gather=cuts(g.gather)) for g in spec.groups)
    return replace(spec, name=prefix + spec.name, own=tuple(prefix + o for o in spec.own), groups=groups)


def _walk(module: nn.Module, prefix: str, prune_embed: bool, specs: list[LayerSpec], keep: set[str]) -> None:
    room = room_of(module)
    if room is not None:
        specs += [with_prefix(s, prefix) for s in room.layers(module, prune_embed)]
        keep.update(prefix + k for k in room.keep)
        if not room.descend:
            return
    for name, child in module.named_children():
        _walk(child, f"{prefix}{name}.", prune_embed, specs, keep)


def _holds_channels(module: nn.Module) -> bool:
    """Whether the module's own parameters or persistent buffers could hold per-channel values
    (a single number, such as a parametric LIF neuron's time constant, has no channel to cut)."""
    tensors = [p for p in module._parameters.values() if p is not None] + [
        b for n, b in module._buffers.items() if b is not None and n not in module._non_persistent_buffers_set]
    return any(t.numel() > 1 for t in tensors)


def layer_specs(model: nn.Module, prune_embed: bool = False) -> list[LayerSpec]:
    """The layers of ``model`` (network order), every state-holding module accounted for."""
    root = room_of(model)
    if prune_embed and not (root and root.prune_embed):
        raise PrimeSVTError(f"prune_embed (the embedding dimension as one global group) is not supported for "
                            f"{type(model).__name__}: only the Spikformer families have one stream width")
    specs: list[LayerSpec] = []
    keep: set[str] = set()
    _walk(model, "", prune_embed, specs, keep)
    modules = dict(model.named_modules())
    covered = set(keep)
    for spec in specs:
        for group in spec.groups:
            named = [c.module for c in (*group.cuts, *group.rank)] + [s.module for s in (*group.mask, *group.scatter, *group.gather)]
            for name in named:
                if name not in modules:
                    raise PrimeSVTError(f"layer {spec.name!r} names module {name!r}, which {type(model).__name__} "
                                        f"does not have: its pruning rule does not fit this model ({HELP})")
            covered.update(c.module for c in group.cuts)
    for name, module in modules.items():
        if name not in covered and _holds_channels(module):
            raise PrimeSVTError(
                f"cannot prune {type(model).__name__}: module {name!r} ({type(module).__name__}) is in no prunable "
                f"layer and no pruning rule covers it; register a Room for its block with "
                f"primesvt_optuna.pruning.register ({HELP})")
    return specs


def make_width_agnostic(model: nn.Module) -> None:
    """Give every module whose room has one its width-agnostic class (same state, same function)."""
    for module in model.modules():
        room = room_of(module)
        if room is not None and room.width_agnostic is not None:
            module.__class__ = room.width_agnostic


from . import families  # noqa: E402,F401  (registers the built-in rooms)
