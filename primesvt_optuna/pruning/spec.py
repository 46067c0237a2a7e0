"""The declarative vocabulary a model-family adapter uses to describe its prunable layers.

A *layer* of the PrimeSVT walk is one rate. It owns one or more *channel groups*: sets of
channels that are ranked and removed together. Each group lists the tensors its channels live in
(``Cut``), where the unpruned reference zeroes a removed channel (``mask``), and, for branches
that end in a residual add, where the branch's kept channels are written back into the full-width
stream (``scatter``) or read out of it (``gather``). The engine core only interprets this data, so
a new model family needs a new adapter, never a new engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CutKind = Literal["out", "in", "norm", "depthwise"]


@dataclass(frozen=True)
class Cut:
    """Channels ``offset .. offset+channels`` of one axis of one module.

    ``out``: output channels of a Conv/Linear (``weight`` dim 0 and ``bias``);
    ``in``: input channels of a Conv/Linear (``weight`` dim 1);
    ``norm``: every per-channel tensor of a BatchNorm (weight, bias, running mean and variance);
    ``depthwise``: the channels of a depthwise conv (``groups == channels``), whose filter ``c``
    reads only input channel ``c``: its input and output go together (``weight`` dim 0, ``bias``),
    so its group also gathers the kept channels of its input.
    """

    module: str
    kind: CutKind
    offset: int = 0


@dataclass(frozen=True)
class Site:
    """A module's output (mask, scatter) or input (gather) along channel dimension ``dim``."""

    module: str
    dim: int
    offset: int = 0


@dataclass(frozen=True)
class ChannelGroup:
    """Channels removed together: ``heads`` equal slices, the same count removed from each."""

    channels: int
    rank: tuple[Cut, ...]
    cuts: tuple[Cut, ...]
    mask: tuple[Site, ...]
    scatter: tuple[Site, ...] = ()
    gather: tuple[Site, ...] = ()
    heads: int = 1


@dataclass(frozen=True)
class LayerSpec:
    """One prunable layer: its rate name, the modules whose size ranks it, and its groups."""

    name: str
    own: tuple[str, ...]
    groups: tuple[ChannelGroup, ...]
    role: str = ""
