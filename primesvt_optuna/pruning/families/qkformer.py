"""QKFormer (Zhou et al., NeurIPS 2024) as spikingjelly 2.0 builds it.

* Three stages of different widths (D/4, D/2, D); each patch-embedding stage ends in two writers
  into the next stream, its main conv and a convolutional shortcut (conv, BN, LIF).
* Q-K attention, fused ``qk`` conv (D -> 2D). Token attention (``qka_type="token"``): q is summed
  over the channels of each head into a token mask applied to k, so q channels and k channels are
  two groups of one layer (the same count per head from each, so q and k stay as wide); k channel
  ``c`` is the projection's input ``c``. Channel attention: ``lif(sum_tokens(q_c)) * k_c``, so q
  and k channel ``c`` and the projection's input ``c`` are one group. The pruned attention
  (``WidthAgnosticQKAttention``) reads its width from the tensors.
* The last stage uses Spikformer's SSA (``layer.SpikingSelfAttention``, see ``common.ssa``).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based.layer.attention import (
    ChannelQKAttention, QKAttention, SpikingSelfAttention, TokenQKAttention,
)
from spikingjelly.activation_based.model import qkformer as qkf

from ..adapters import Room, register
from ..spec import ChannelGroup, Cut, LayerSpec, Site
from .common import CHANNELS, filters, nothing, ssa, width


def embed_init(m: qkf._PatchEmbedInit, prune_embed: bool = False) -> list[LayerSpec]:
    return [filters(m, "conv1", "bn1", "lif1", readers=("conv2", "shortcut.0"), role="stem"),
            filters(m, "conv2", "bn2", "lif2", readers=("conv3",), role="stem"),
            filters(m, "conv3", "bn3", "lif3", writes=True),
            filters(m, "shortcut.0", "shortcut.1", "shortcut.2", writes=True)]


def embed_stage(m: qkf._PatchEmbedStage, prune_embed: bool = False) -> list[LayerSpec]:
    return [filters(m, "conv1", "bn1", "lif1", readers=("conv2",), role="stem"),
            filters(m, "conv2", "bn2", "lif2", writes=True),
            filters(m, "shortcut.0", "shortcut.1", "shortcut.2", writes=True)]


def qk_attention(m: QKAttention, prune_embed: bool = False) -> list[LayerSpec]:
    qk, norm, d, heads = "qk_conv_bn.0", "qk_conv_bn.1", width(m, "qk_conv_bn.0") // 2, m.num_heads
    q_cuts, k_cuts = (Cut(qk, "out", 0), Cut(norm, "norm", 0)), (Cut(qk, "out", d), Cut(norm, "norm", d))
    q_mask, k_mask = Site("qk_lif", CHANNELS, 0), Site("qk_lif", CHANNELS, d)
    proj_in = Cut("proj_conv_bn.0", "in")
    if m.qka_type == "token":
        groups = (ChannelGroup(d, heads=heads, rank=(q_cuts[0],), cuts=q_cuts, mask=(q_mask,)),
                  ChannelGroup(d, heads=heads, rank=(k_cuts[0],), cuts=(*k_cuts, proj_in), mask=(k_mask,)))
    else:
        groups = (ChannelGroup(d, heads=heads, rank=(q_cuts[0], k_cuts[0]), cuts=(*q_cuts, *k_cuts, proj_in),
                               mask=(q_mask, k_mask)),)
    return [LayerSpec(qk, (qk,), groups, role="attention"),
            filters(m, "proj_conv_bn.0", "proj_conv_bn.1", "proj_lif", writes=True)]


class WidthAgnosticQKAttention(QKAttention):
    """``QKAttention`` with its width read from the ``qk`` tensor instead of the stream's."""

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if x_seq.ndim != 4:
            raise ValueError(f"expected 4D input with shape [T, N, C, L], but got input with shape {x_seq.shape}")
        t, n, _, length = x_seq.shape
        qk = self.qk_lif(self.qk_conv_bn(x_seq))
        c = qk.shape[2] // 2
        qk = qk.reshape(t, n, 2, self.num_heads, c // self.num_heads, length)
        return self.proj_lif(self.proj_conv_bn(self._qka_forward_torch(qk).flatten(2, 3)))


def mlp(m: qkf._MLP, prune_embed: bool = False) -> list[LayerSpec]:
    return [filters(m, "fc1", "bn1", "lif1", readers=("fc2",), role="mlp"), filters(m, "fc2", "bn2", "lif2", writes=True)]


register(qkf.QKFormer, Room(nothing, keep=("head",), descend=True))
register(qkf._PatchEmbedInit, Room(embed_init))
register(qkf._PatchEmbedStage, Room(embed_stage))
for cls in (QKAttention, TokenQKAttention, ChannelQKAttention):
    register(cls, Room(qk_attention, width_agnostic=WidthAgnosticQKAttention))
register(SpikingSelfAttention, Room(ssa))
register(qkf._MLP, Room(mlp))
