"""Building blocks the family rooms share: a conv's filters, a depthwise conv, fused attention
projections, the membrane-shortcut MLP. Names are relative to the module the room describes.

Tokens travel as ``[T, B, C, ...]`` in every spikingjelly family, so the channel dimension of
every mask, scatter and gather site is 2 unless a room says otherwise.
"""

from __future__ import annotations

import torch.nn as nn

from ..spec import ChannelGroup, Cut, LayerSpec, Site

CHANNELS = 2  # channel dimension of spikingjelly's multi-step tensors [T, B, C, ...]


def width(module: nn.Module, name: str) -> int:
    """Output channels of a Conv/Linear (rows of its weight)."""
    return module.get_submodule(name).weight.shape[0]


def filters(m: nn.Module, conv: str, norm: str | None, site: str, *, readers: tuple[str, ...] = (), writes: bool = False,
            gathers: tuple[str, ...] = (), role: str = "", dim: int = CHANNELS) -> LayerSpec:
    """The output filters of ``conv`` (with its norm): ``readers`` lose the matching input channels;
    ``site`` is where a removed channel's whole path has ended (its neuron, or the norm of a
    membrane-shortcut branch that adds into a stream); a writer (``writes``) puts its kept channels
    back into the full-width stream at ``site``, and ``gathers`` read them back out of it."""
    cuts = (Cut(conv, "out"), *((Cut(norm, "norm"),) if norm else ()), *(Cut(r, "in") for r in readers))
    group = ChannelGroup(
        width(m, conv), rank=(Cut(conv, "out"),), cuts=cuts, mask=(Site(site, dim),),
        scatter=(Site(site, dim),) if writes else (), gather=tuple(Site(g, dim) for g in gathers))
    return LayerSpec(conv, (conv,), (group,), role=role or ("residual" if writes else "hidden"))


def depthwise(m: nn.Module, conv: str, norm: str, site: str, *, role: str = "residual", dim: int = CHANNELS) -> LayerSpec:
    """A depthwise conv writing into a stream: channel ``c``'s input, filter and output go together,
    so the conv gathers its kept inputs from the stream and scatters its kept outputs back."""
    group = ChannelGroup(
        width(m, conv), rank=(Cut(conv, "out"),), cuts=(Cut(conv, "depthwise"), Cut(norm, "norm")),
        mask=(Site(site, dim),), scatter=(Site(site, dim),), gather=(Site(conv, dim),))
    return LayerSpec(conv, (conv,), (group,), role=role)


def fused_qk_v(m: nn.Module, qkv: str, norm: str, lif: str, proj: str, heads: int, dim: int = CHANNELS) -> LayerSpec:
    """Spikformer's SSA with q, k, v in one conv (``D -> 3D``): q/k channel pairs meet in ``q @ k^T``,
    v channels are the projection's inputs; one rate, the same count removed in every head."""
    d = width(m, qkv) // 3
    qk = ChannelGroup(
        d, heads=heads, rank=(Cut(qkv, "out", 0), Cut(qkv, "out", d)),
        cuts=(Cut(qkv, "out", 0), Cut(norm, "norm", 0), Cut(qkv, "out", d), Cut(norm, "norm", d)),
        mask=(Site(lif, dim, 0), Site(lif, dim, d)))
    v = ChannelGroup(
        d, heads=heads, rank=(Cut(qkv, "out", 2 * d),),
        cuts=(Cut(qkv, "out", 2 * d), Cut(norm, "norm", 2 * d), Cut(proj, "in")),
        mask=(Site(lif, dim, 2 * d),))
    return LayerSpec(qkv, (qkv,), (qk, v), role="attention")


def membrane_mlp(m: nn.Module, prune_embed: bool = False) -> list[LayerSpec]:
    """``x + bn2(fc2(lif2(bn1(fc1(lif1(x))))))``, the neuron before each conv (Spike-Driven
    Transformer's MLP, MaxFormer's spatial MLP). With ``hidden == dim`` fc1 adds into the stream
    too, so it is a writer; otherwise its outputs are fc2's inputs."""
    if m.residual:
        fc1 = filters(m, "fc1", "bn1", "bn1", writes=True)
    else:
        fc1 = filters(m, "fc1", "bn1", "lif2", readers=("fc2",), role="mlp")
    return [fc1, filters(m, "fc2", "bn2", "bn2", writes=True)]


def ssa(m: nn.Module, prune_embed: bool = False) -> list[LayerSpec]:
    """spikingjelly's ``layer.SpikingSelfAttention``: fused q/k/v, then ``proj`` + BN + LIF."""
    return [fused_qk_v(m, "qkv_conv_bn.0", "qkv_conv_bn.1", "qkv_lif", "proj_conv_bn.0", m.num_heads),
            filters(m, "proj_conv_bn.0", "proj_conv_bn.1", "proj_lif", writes=True)]


def nothing(m: nn.Module, prune_embed: bool = False) -> list[LayerSpec]:
    """A model class whose own modules are only its head: its children have rooms of their own."""
    return []
