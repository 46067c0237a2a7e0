"""MaxFormer as spikingjelly 2.0 builds it (ImageNet and CIFAR variants).

* Max-pool embeddings: each stage writes into the next stream through its main conv and a
  shortcut (conv, BN and, in the later stages, max pooling), neurons before the convs.
* Depthwise-convolution blocks: ``x + bn(dwconv(lif(x)))``; a depthwise conv's channel ``c``
  reads only input ``c``, so its filter, its input and its output go together (``depthwise`` cut,
  the input gathered from the stream), followed by a spatial MLP.
* Spatial MLP: the Spike-Driven Transformer's membrane-shortcut MLP (``common.membrane_mlp``).
* The last stage uses Spikformer's SSA (``layer.SpikingSelfAttention``) or, in the CIFAR variant,
  its own SSA whose neuron comes before the fused qkv conv and whose projection ends in a BN; that
  one reads its width from the stream, so the pruned copy reads it from the tensors
  (``WidthAgnosticCifarSSA``).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based.model import maxformer as mxf

from ..adapters import Room, register
from ..spec import LayerSpec
from .common import depthwise, filters, fused_qk_v, membrane_mlp, nothing


def cifar_embed(m: mxf._MaxCifarEmbed, prune_embed: bool = False) -> list[LayerSpec]:
    return [filters(m, "conv", "bn", "bn", readers=("branch.1", "shortcut.1"), role="stem"),
            filters(m, "branch.1", "branch.2", "branch.2", writes=True),
            filters(m, "shortcut.1", "shortcut.2", "shortcut.2", writes=True)]


def embed_init(m: mxf._MaxEmbedInit, prune_embed: bool = False) -> list[LayerSpec]:
    return [filters(m, "conv1", "bn1", "lif1", readers=("conv2", "shortcut.0"), role="stem"),
            filters(m, "conv2", "bn2", "lif2", readers=("conv3",), role="stem"),
            filters(m, "conv3", "bn3", "bn3", writes=True),
            filters(m, "shortcut.0", "shortcut.1", "shortcut.1", writes=True)]


def embed_stage(m: mxf._MaxEmbedStage, prune_embed: bool = False) -> list[LayerSpec]:
    return [filters(m, "conv1", "bn1", "lif2", readers=("conv2",), role="stem"),
            filters(m, "conv2", "bn2", "bn2", writes=True),
            filters(m, "shortcut.0", "shortcut.1", "shortcut.2", writes=True)]


def dwc_block(m: mxf._DWCBlock, prune_embed: bool = False) -> list[LayerSpec]:
    return [depthwise(m, "dwconv", "bn", "bn")]  # its spatial MLP has a room of its own


def cifar_ssa(m: mxf._MaxCifarSSA, prune_embed: bool = False) -> list[LayerSpec]:
    return [fused_qk_v(m, "qkv.0", "qkv.1", "qkv_lif", "proj.0", m.num_heads),
            filters(m, "proj.0", "proj.1", "proj", writes=True)]


class WidthAgnosticCifarSSA(mxf._MaxCifarSSA):
    """MaxFormer's CIFAR SSA with the q/k/v width read from the tensors instead of the stream's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, n, _, length = x.shape
        q, k, v = self.qkv_lif(self.qkv(self.input_lif(x))).chunk(3, dim=2)
        c = q.shape[2]
        q, k, v = [z.transpose(-1, -2).reshape(t, n, length, self.num_heads, c // self.num_heads).permute(0, 1, 3, 2, 4)
                   for z in (q, k, v)]
        x = (q @ (k.transpose(-2, -1) @ v)) * 0.125
        return self.proj(self.attn_lif(x.transpose(3, 4).reshape(t, n, c, length)))


register(mxf.MaxFormer, Room(nothing, keep=("head",), descend=True))
register(mxf._MaxCifarEmbed, Room(cifar_embed))
register(mxf._MaxEmbedInit, Room(embed_init))
register(mxf._MaxEmbedStage, Room(embed_stage))
register(mxf._DWCBlock, Room(dwc_block, descend=True))
register(mxf._SpatialMLP, Room(membrane_mlp))
register(mxf._MaxCifarSSA, Room(cifar_ssa, width_agnostic=WidthAgnosticCifarSSA))
