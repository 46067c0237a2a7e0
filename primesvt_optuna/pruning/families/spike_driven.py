"""Spike-Driven Transformer v1 (Yao et al., NeurIPS 2023) as spikingjelly 2.0 builds it.

* Membrane shortcuts: every branch starts with a neuron and ends with a BatchNorm that adds into
  the stream, so a writer's removed channel ends at its norm (the mask and scatter site).
* Spike-driven self-attention: ``q * lif(sum_tokens(k * v))`` channel by channel, so channel ``c``
  of q, k, v and input ``c`` of the projection are one group (``q_conv+k_conv+v_conv``), ranked by
  the joint norm of the three filters, the same count removed in every head (so the head split
  stays valid); the pruned attention (``WidthAgnosticSDSA``) reads its width from the tensors
  instead of the constructor's ``head_dim``.
* Patch embedding: stage convs feed the next conv; the last one (no neuron) starts the stream and
  ``rpe_conv`` gathers its kept channels, like Spikformer's ``proj_conv3``.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based.layer.attention import SpikeDrivenSelfAttention
from spikingjelly.activation_based.model import spike_driven_transformer as sdt

from ..adapters import Room, register
from ..spec import ChannelGroup, Cut, LayerSpec, Site
from .common import CHANNELS, filters, membrane_mlp, nothing, width


def patch_embed(m: sdt._PatchEmbed, prune_embed: bool = False) -> list[LayerSpec]:
    stages = len(m.stages)
    layers = [filters(m, f"stages.{i}.0", f"stages.{i}.1", f"stages.{i}.2", role="stem",
                      readers=(f"stages.{i + 1}.0" if i + 1 < stages else "final_stage.0",)) for i in range(stages)]
    layers.append(filters(m, "final_stage.0", "final_stage.1", "final_stage", readers=("rpe_conv",), writes=True,
                          gathers=("rpe_conv",)))
    layers.append(filters(m, "rpe_conv", "rpe_bn", "rpe_bn", writes=True))
    return layers


def sdsa(m: SpikeDrivenSelfAttention, prune_embed: bool = False) -> list[LayerSpec]:
    convs = ("q_conv", "k_conv", "v_conv")
    group = ChannelGroup(
        width(m, "q_conv"), heads=m.num_heads, rank=tuple(Cut(c, "out") for c in convs),
        cuts=(*(c for x in "qkv" for c in (Cut(f"{x}_conv", "out"), Cut(f"{x}_bn", "norm"))), Cut("proj_conv", "in")),
        mask=tuple(Site(f"{x}_lif", CHANNELS) for x in "qkv"))
    return [LayerSpec("+".join(convs), convs, (group,), role="attention"),
            filters(m, "proj_conv", "proj_bn", "proj_bn", writes=True)]


class WidthAgnosticSDSA(SpikeDrivenSelfAttention):
    """``SpikeDrivenSelfAttention`` with its width read from the q/k/v tensors (narrower than the
    stream once pruned) instead of the constructor's ``head_dim`` and the stream's width. It calls
    its children with the same shapes as the original, so the robustness sweep's shared prefixes
    (recorded outputs of those children) stay valid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected 5D input [T, N, C, H, W], but got {x.shape}")
        t, n, _, h, w = x.shape
        identity = x
        x = self.shortcut_lif(x)
        q = self.q_lif(self.q_bn(self.q_conv(x)))
        k = self.k_lif(self.k_bn(self.k_conv(x)))
        v = self.v_lif(self.v_bn(self.v_conv(x)))
        c = q.shape[2]

        def split_heads(value: torch.Tensor) -> torch.Tensor:
            value = value.flatten(3).transpose(-1, -2)
            return value.reshape(t, n, h * w, self.num_heads, c // self.num_heads).permute(0, 1, 3, 2, 4)

        q, k, v = split_heads(q), split_heads(k), split_heads(v)
        x = q * self.attn_lif((k * v).sum(dim=-2, keepdim=True))
        x = x.transpose(3, 4).reshape(t, n, c, h, w)
        return self.proj_bn(self.proj_conv(x)) + identity


register(sdt.SpikeDrivenTransformer, Room(nothing, keep=("head",), descend=True))
register(sdt._PatchEmbed, Room(patch_embed))
register(SpikeDrivenSelfAttention, Room(sdsa, width_agnostic=WidthAgnosticSDSA))
register(sdt._MLP, Room(membrane_mlp))
