"""The exactness reference: the unpruned model with each removed channel's path cut by hooks.

A removed filter is not a zeroed filter: BatchNorm turns a zero input into a constant that can
still make a neuron spike. The reference instead zeroes each removed channel right after its
neuron, at every time step, which is what physically removing the channel's whole path
(conv/linear, BN, LIF, and for a residual branch its contribution to the stream) computes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .engine import Engine


class _ZeroChannels:
    def __init__(self, dim: int, index: torch.Tensor) -> None:
        self.dim, self.index = dim, index

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output.index_fill(self.dim, self.index.to(output.device), 0.0)


def masked_reference(engine: Engine, structure: dict) -> nn.Module:
    """A copy of the engine's unpruned model whose removed channels' paths are cut by hooks."""
    ref = copy.deepcopy(engine.model)
    modules = dict(ref.named_modules())
    zeroed: dict[tuple[str, int], set[int]] = {}
    for name, kept_groups in structure["layers"].items():
        for group, kept in zip(engine.specs[name].groups, kept_groups):
            gone = set(range(group.channels)) - set(kept)
            for site in group.mask:
                zeroed.setdefault((site.module, site.dim), set()).update(site.offset + c for c in gone)
    for (module, dim), channels in zeroed.items():
        index = torch.tensor(sorted(channels), dtype=torch.long)
        modules[module].register_forward_hook(_ZeroChannels(dim, index))
    return ref
