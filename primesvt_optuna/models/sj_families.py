"""spikingjelly 2.0's Spike-Driven Transformer, QKFormer and MaxFormer, built from a model config.

The models are spikingjelly's own classes, unwrapped: their module names are spikingjelly's, so a
state dict saved from a model a user built with spikingjelly loads into the preset of the same
shape, and every one maps images ``[B, C, H, W]`` to logits ``[B, classes]`` already.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn


def build_sj(c: dict[str, Any]) -> nn.Module:
    """The spikingjelly model of a resolved config of family spike-driven, qkformer or maxformer."""
    common = dict(T=c["T"], in_channels=c["in_channels"], num_classes=c["num_classes"], embed_dims=c["embed_dim"],
                  mlp_ratio=c["mlp_ratio"])
    if c["family"] == "spike-driven":
        from spikingjelly.activation_based.model.spike_driven_transformer import SpikeDrivenTransformer

        return SpikeDrivenTransformer(**common, num_heads=c["num_heads"], depths=c["depth"], pooling_stat=c["pooling_stat"])
    if c["family"] == "qkformer":
        from spikingjelly.activation_based.model.qkformer import QKFormer

        return QKFormer(**common, num_heads=tuple(c["num_heads"]), depths=tuple(c["depth"]), qka_type=c["qka_type"])
    from spikingjelly.activation_based.model.maxformer import MaxFormer

    return MaxFormer(**common, depths=tuple(c["depth"]), cifar=bool(c["cifar"]))
