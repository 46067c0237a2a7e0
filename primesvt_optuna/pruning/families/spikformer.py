"""This package's Spikformer (original names, both variants) and spikingjelly 2.0's built-in one.

Decisions (docs/engine.md, "What one layer of the walk is"):

* q and k pair up channel by channel inside ``q @ k^T``: they are one layer (``...q_conv+k_conv``)
  ranked by the joint L2 norm of the pair, removed the same number per head.
* v is its own layer; its removed channels are also the attention projection's input channels.
  It too is removed the same number per head, so the per-head reshape stays valid.
* fc1's removed outputs are fc2's removed inputs (one layer, ``...fc1_*``).
* Residual writers (``rpe_conv``, attention ``proj``, ``fc2``, ``proj_conv3``) compute only their
  kept channels; a forward hook writes them into the full-width stream by index, so the branch adds
  nothing to a removed channel while the stream keeps its ``D`` channels.
* ``proj_conv3`` feeds both the stream and ``rpe_conv``: its kept channels are scattered into the
  stream and gathered back for ``rpe_conv``, whose matching input channels are removed.
* The classification head's outputs are never pruned.
* ``prune_embed=True`` replaces the residual-writer layers by one global ``embed_dim`` layer that
  removes stream channels everywhere (writers' outputs, readers' inputs, the head's inputs).

spikingjelly's built-in Spikformer fuses q, k and v into one ``qkv_conv_bn`` (D -> 3D, reshaped per
head), so there q, k and v are one layer with one rate: a q/k pair group and a v group. It is
supported as built (``spikingjelly.activation_based.model.spikformer.Spikformer``) and inside this
package's ``SJSpikformer`` wrapper (names under ``net.``).
"""

from __future__ import annotations

from spikingjelly.activation_based.model.spikformer import Spikformer as SJNet

from ...models.sj_spikformer import SJSpikformer
from ...models.spikformer import Spikformer
from ..adapters import Room, register, with_prefix
from ..spec import ChannelGroup, Cut, LayerSpec, Site
from .common import fused_qk_v


def _stream_group(channels: int, writers: list[tuple[str, str, str, int]], readers: list[str],
                  extra_cuts: list[Cut], mask: list[Site]) -> ChannelGroup:
    """The global embedding-dimension group: every writer's rows and every reader's columns."""
    cuts = [c for conv, bn, _, _ in writers for c in (Cut(conv, "out"), Cut(bn, "norm"))]
    cuts += [Cut(r, "in") for r in readers] + extra_cuts
    return ChannelGroup(channels, rank=tuple(Cut(w[0], "out") for w in writers), cuts=tuple(cuts), mask=tuple(mask))


def spikformer_layers(model: Spikformer, prune_embed: bool = False) -> list[LayerSpec]:
    """Layers of this package's Spikformer (both variants; names as in the original code)."""
    kind = "linear" if model.variant == "cifar" else "conv"
    tok = 3 if model.variant == "cifar" else 2  # channel dim of [T,B,N,C] resp. [T,B,C,N] tokens
    p = "patch_embed."
    sps = model.patch_embed
    suffix = ["", "1", "2", "3"]
    pooled = lambda i: f"{p}maxpool{suffix[i]}" if i in sps.pool_stages else f"{p}proj_lif{suffix[i]}"
    layers: list[LayerSpec] = []
    for i in range(3):
        s, n = suffix[i], suffix[i + 1]
        conv = f"{p}proj_conv{s}"
        layers.append(LayerSpec(conv, (conv,), (ChannelGroup(
            getattr(sps, f"proj_conv{s}").out_channels, rank=(Cut(conv, "out"),),
            cuts=(Cut(conv, "out"), Cut(f"{p}proj_bn{s}", "norm"), Cut(f"{p}proj_conv{n}", "in")),
            mask=(Site(f"{p}proj_lif{s}", 2),)),), role="sps"))
    dim = sps.rpe_conv.out_channels
    if not prune_embed:
        conv3 = f"{p}proj_conv3"
        layers.append(LayerSpec(conv3, (conv3,), (ChannelGroup(
            dim, rank=(Cut(conv3, "out"),),
            cuts=(Cut(conv3, "out"), Cut(f"{p}proj_bn3", "norm"), Cut(f"{p}rpe_conv", "in")),
            mask=(Site(f"{p}proj_lif3", 2),), scatter=(Site(pooled(3), 2),),
            gather=(Site(f"{p}rpe_conv", 2),)),), role="residual"))
        rpe = f"{p}rpe_conv"
        layers.append(LayerSpec(rpe, (rpe,), (ChannelGroup(
            dim, rank=(Cut(rpe, "out"),), cuts=(Cut(rpe, "out"), Cut(f"{p}rpe_bn", "norm")),
            mask=(Site(f"{p}rpe_lif", 2),), scatter=(Site(f"{p}rpe_lif", 2),)),), role="residual"))
    for b, blk in enumerate(model.block):
        a, m = f"block.{b}.attn.", f"block.{b}.mlp."
        heads = blk.attn.num_heads
        q, k, v, proj = (f"{a}{x}_{kind}" for x in ("q", "k", "v", "proj"))
        layers.append(LayerSpec(f"{q}+k_{kind}", (q, k), (ChannelGroup(
            dim, heads=heads, rank=(Cut(q, "out"), Cut(k, "out")),
            cuts=(Cut(q, "out"), Cut(f"{a}q_bn", "norm"), Cut(k, "out"), Cut(f"{a}k_bn", "norm")),
            mask=(Site(f"{a}q_lif", tok), Site(f"{a}k_lif", tok))),), role="attention"))
        layers.append(LayerSpec(v, (v,), (ChannelGroup(
            dim, heads=heads, rank=(Cut(v, "out"),),
            cuts=(Cut(v, "out"), Cut(f"{a}v_bn", "norm"), Cut(proj, "in")),
            mask=(Site(f"{a}v_lif", tok),)),), role="attention"))
        if not prune_embed:
            layers.append(LayerSpec(proj, (proj,), (ChannelGroup(
                dim, rank=(Cut(proj, "out"),), cuts=(Cut(proj, "out"), Cut(f"{a}proj_bn", "norm")),
                mask=(Site(f"{a}proj_lif", tok),), scatter=(Site(f"{a}proj_lif", tok),)),), role="residual"))
        fc1, fc2 = f"{m}fc1_{kind}", f"{m}fc2_{kind}"
        hidden = getattr(blk.mlp, f"fc1_{kind}").weight.shape[0]
        layers.append(LayerSpec(fc1, (fc1,), (ChannelGroup(
            hidden, rank=(Cut(fc1, "out"),), cuts=(Cut(fc1, "out"), Cut(f"{m}fc1_bn", "norm"), Cut(fc2, "in")),
            mask=(Site(f"{m}fc1_lif", tok),)),), role="mlp"))
        if not prune_embed:
            layers.append(LayerSpec(fc2, (fc2,), (ChannelGroup(
                dim, rank=(Cut(fc2, "out"),), cuts=(Cut(fc2, "out"), Cut(f"{m}fc2_bn", "norm")),
                mask=(Site(f"{m}fc2_lif", tok),), scatter=(Site(f"{m}fc2_lif", tok),)),), role="residual"))
    if prune_embed:
        writers = [(f"{p}proj_conv3", f"{p}proj_bn3", f"{p}proj_lif3", 2), (f"{p}rpe_conv", f"{p}rpe_bn", f"{p}rpe_lif", 2)]
        readers = [f"{p}rpe_conv", "head"]
        for b in range(len(model.block)):
            a, m = f"block.{b}.attn.", f"block.{b}.mlp."
            writers += [(f"{a}proj_{kind}", f"{a}proj_bn", f"{a}proj_lif", tok), (f"{m}fc2_{kind}", f"{m}fc2_bn", f"{m}fc2_lif", tok)]
            readers += [f"{a}{x}_{kind}" for x in ("q", "k", "v")] + [f"{m}fc1_{kind}"]
        layers.append(LayerSpec("embed_dim", tuple(w[0] for w in writers), (_stream_group(
            dim, writers, readers, [], [Site(w[2], w[3]) for w in writers]),), role="embedding"))
    return layers


def sj_spikformer_layers(net: SJNet, prune_embed: bool = False) -> list[LayerSpec]:
    """Layers of spikingjelly 2.0's built-in Spikformer."""
    p = "patch_embed."
    stage = lambda i: f"{p}stages.{i}.conv_bn.block."
    layers: list[LayerSpec] = []
    for i in range(3):
        conv = f"{stage(i)}0"
        layers.append(LayerSpec(conv, (conv,), (ChannelGroup(
            net.patch_embed.stages[i].conv_bn.block[0].out_channels, rank=(Cut(conv, "out"),),
            cuts=(Cut(conv, "out"), Cut(f"{stage(i)}1", "norm"), Cut(f"{stage(i + 1)}0", "in")),
            mask=(Site(f"{p}stages.{i}.neuron", 2),)),), role="sps"))
    dim = net.embed_dims
    pe = f"{p}positional_encoding.conv_bn.block."
    if not prune_embed:
        conv3 = f"{stage(3)}0"
        layers.append(LayerSpec(conv3, (conv3,), (ChannelGroup(
            dim, rank=(Cut(conv3, "out"),), cuts=(Cut(conv3, "out"), Cut(f"{stage(3)}1", "norm"), Cut(f"{pe}0", "in")),
            mask=(Site(f"{p}stages.3.neuron", 2),), scatter=(Site(f"{p}stages.3", 2),),
            gather=(Site(f"{p}positional_encoding", 2),)),), role="residual"))
        layers.append(LayerSpec(f"{pe}0", (f"{pe}0",), (ChannelGroup(
            dim, rank=(Cut(f"{pe}0", "out"),), cuts=(Cut(f"{pe}0", "out"), Cut(f"{pe}1", "norm")),
            mask=(Site(f"{p}positional_encoding.neuron", 2),),
            scatter=(Site(f"{p}positional_encoding", 2),)),), role="residual"))
    for b, blk in enumerate(net.blocks):
        a, m = f"blocks.{b}.attn.", f"blocks.{b}.mlp."
        layers.append(with_prefix(fused_qk_v(blk.attn, "qkv_conv_bn.0", "qkv_conv_bn.1", "qkv_lif", "proj_conv_bn.0",
                                             blk.attn.num_heads), a))
        proj = f"{a}proj_conv_bn.0"
        if not prune_embed:
            layers.append(LayerSpec(proj, (proj,), (ChannelGroup(
                dim, rank=(Cut(proj, "out"),), cuts=(Cut(proj, "out"), Cut(f"{a}proj_conv_bn.1", "norm")),
                mask=(Site(f"{a}proj_lif", 2),), scatter=(Site(f"{a}proj_lif", 2),)),), role="residual"))
        fc1, fc2 = f"{m}fc1.0", f"{m}fc2.0"
        layers.append(LayerSpec(fc1, (fc1,), (ChannelGroup(
            blk.mlp.fc1[0].out_channels, rank=(Cut(fc1, "out"),),
            cuts=(Cut(fc1, "out"), Cut(f"{m}fc1.1", "norm"), Cut(fc2, "in")),
            mask=(Site(f"{m}neuron1", 2),)),), role="mlp"))
        if not prune_embed:
            layers.append(LayerSpec(fc2, (fc2,), (ChannelGroup(
                dim, rank=(Cut(fc2, "out"),), cuts=(Cut(fc2, "out"), Cut(f"{m}fc2.1", "norm")),
                mask=(Site(f"{m}neuron2", 2),), scatter=(Site(f"{m}neuron2", 2),)),), role="residual"))
    if prune_embed:
        writers = [(f"{stage(3)}0", f"{stage(3)}1", f"{p}stages.3.neuron", 2), (f"{pe}0", f"{pe}1", f"{p}positional_encoding.neuron", 2)]
        readers = [f"{pe}0", "head"]
        for b in range(len(net.blocks)):
            a, m = f"blocks.{b}.attn.", f"blocks.{b}.mlp."
            writers += [(f"{a}proj_conv_bn.0", f"{a}proj_conv_bn.1", f"{a}proj_lif", 2), (f"{m}fc2.0", f"{m}fc2.1", f"{m}neuron2", 2)]
            readers += [f"{a}qkv_conv_bn.0", f"{m}fc1.0"]
        layers.append(LayerSpec("embed_dim", tuple(w[0] for w in writers), (_stream_group(
            dim, writers, readers, [], [Site(w[2], w[3]) for w in writers]),), role="embedding"))
    return layers


register(Spikformer, Room(spikformer_layers, keep=("head",), prune_embed=True))
register(SJNet, Room(sj_spikformer_layers, keep=("head",), prune_embed=True))
register(SJSpikformer, Room(lambda m, embed: [with_prefix(s, "net.") for s in sj_spikformer_layers(m.net, embed)],
                            keep=("net.head",), prune_embed=True))
