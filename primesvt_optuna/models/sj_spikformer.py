"""spikingjelly 2.0's built-in Spikformer, wrapped to take images and return ``[B, classes]``.

The built-in returns logits per time step (``[T, N, classes]``); the wrapper averages them so
that every model of the zoo has the same interface. The wrapped module keeps spikingjelly's own
names under ``net.`` (``net.blocks.0.attn.qkv_conv_bn.0.weight`` ...).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from spikingjelly.activation_based.model.spikformer import Spikformer


class SJSpikformer(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.T = c["T"]
        self.net = Spikformer(
            T=c["T"], in_channels=c["in_channels"], img_size_h=c["img_size"], img_size_w=c["img_size"],
            patch_size=c["patch_size"], num_classes=c["num_classes"], embed_dims=c["embed_dim"],
            num_heads=c["num_heads"], mlp_ratio=c["mlp_ratio"], depths=c["depth"],
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(0)
