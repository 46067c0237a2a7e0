"""Spikformer (Zhou et al., ICLR 2023) on spikingjelly 2.0, with the original code's names.

Two variants share one structure:

* ``imagenet``: conv SPS with a max pooling after each of the four stages (patch 16),
  1x1 ``Conv1d`` projections named ``q_conv`` ... ``proj_conv``, ``fc1_conv``/``fc2_conv``;
  tokens travel as ``[T, B, C, N]``.
* ``cifar``: SPS pooling only after ``proj_conv2`` and ``proj_conv3`` (patch 4), ``Linear`` +
  ``BatchNorm1d`` projections named ``q_linear`` ... ``proj_linear``, ``fc1_linear``/``fc2_linear``;
  tokens travel as ``[T, B, N, C]``.

Parameter and buffer names match the original repository, so a checkpoint trained with the
original layout loads with ``strict=True`` (the two unused LayerNorms per block are not created:
drop ``block.*.norm1/norm2`` keys from such a checkpoint first, see README).

Every width is read from the tensors, never from the constructor, so a model whose channels
the pruning engine removed still runs: per-head widths come from ``x.shape // num_heads``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron


def lif(v_threshold: float = 1.0) -> neuron.LIFNode:
    """The original's ``MultiStepLIFNode(tau=2.0, detach_reset=True)``."""
    return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")


class SPS(nn.Module):
    """Spiking patch splitting: four conv stages, then a conv relative position encoding."""

    def __init__(self, in_channels: int, embed_dim: int, pool_stages: tuple[int, ...]) -> None:
        super().__init__()
        widths = [in_channels, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        suffixes = ["", "1", "2", "3"]
        self.pool_stages = pool_stages
        for i, s in enumerate(suffixes):
            setattr(self, f"proj_conv{s}", layer.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False, step_mode="m"))
            setattr(self, f"proj_bn{s}", layer.BatchNorm2d(widths[i + 1], step_mode="m"))
            setattr(self, f"proj_lif{s}", lif())
            if i in pool_stages:
                setattr(self, f"maxpool{s}", layer.MaxPool2d(3, 2, 1, step_mode="m"))
        self.rpe_conv = layer.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False, step_mode="m")
        self.rpe_bn = layer.BatchNorm2d(embed_dim, step_mode="m")
        self.rpe_lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` images to ``[T, B, D, H', W']`` spikes."""
        for i, s in enumerate(["", "1", "2", "3"]):
            x = getattr(self, f"proj_lif{s}")(getattr(self, f"proj_bn{s}")(getattr(self, f"proj_conv{s}")(x)))
            if i in self.pool_stages:
                x = getattr(self, f"maxpool{s}")(x)
        x_feat = x
        x = self.rpe_lif(self.rpe_bn(self.rpe_conv(x)))
        return x + x_feat


class SSA(nn.Module):
    """Spiking self-attention: ``q @ k^T @ v * 0.125`` per head, no softmax."""

    def __init__(self, dim: int, num_heads: int, variant: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.variant = variant
        self.scale = 0.125
        kind = "linear" if variant == "cifar" else "conv"
        for name in ("q", "k", "v", "proj"):
            if variant == "cifar":
                proj = layer.Linear(dim, dim, bias=True, step_mode="m")
            else:
                proj = layer.Conv1d(dim, dim, 1, 1, bias=(name == "proj"), step_mode="m")
            setattr(self, f"{name}_{kind}", proj)
            setattr(self, f"{name}_bn", layer.BatchNorm1d(dim, step_mode="m"))
            if name != "proj":
                setattr(self, f"{name}_lif", lif())
        self.attn_lif = lif(v_threshold=0.5)
        self.proj_lif = lif()
        self._kind = kind

    def _branch(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Projection + BN (+ LIF): channels-last tokens for cifar, channels-first for imagenet."""
        y = getattr(self, f"{name}_{self._kind}")(x)
        bn = getattr(self, f"{name}_bn")
        y = bn(y.transpose(-1, -2)).transpose(-1, -2) if self.variant == "cifar" else bn(y)
        return getattr(self, f"{name}_lif")(y)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, N, C]`` to ``[T, B, heads, N, C/heads]`` (width read from the tensor)."""
        t, b, n, c = x.shape
        return x.reshape(t, b, n, self.num_heads, c // self.num_heads).permute(0, 1, 3, 2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "cifar":  # x: [T, B, N, C]
            q, k, v = (self._heads(self._branch(n, x)) for n in ("q", "k", "v"))
            y = (q @ k.transpose(-2, -1)) * self.scale @ v
            y = self.attn_lif(y.transpose(2, 3).flatten(3))  # [T, B, N, C_v]
            return self._branch("proj", y)
        # imagenet, x: [T, B, C, N]; the original evaluates q @ (k^T @ v)
        q, k, v = (self._heads(self._branch(n, x).transpose(-1, -2)) for n in ("q", "k", "v"))
        y = (q @ (k.transpose(-2, -1) @ v)) * self.scale
        y = self.attn_lif(y.transpose(3, 4).flatten(2, 3).contiguous())  # [T, B, C_v, N]
        return self._branch("proj", y)


class MLP(nn.Module):
    """Two projections D -> hidden -> D, each with BN and LIF."""

    def __init__(self, dim: int, hidden: int, variant: str) -> None:
        super().__init__()
        self.variant = variant
        self._kind = "linear" if variant == "cifar" else "conv"
        for name, (i, o) in (("fc1", (dim, hidden)), ("fc2", (hidden, dim))):
            if variant == "cifar":
                proj = layer.Linear(i, o, bias=True, step_mode="m")
            else:
                proj = layer.Conv1d(i, o, 1, 1, bias=True, step_mode="m")
            setattr(self, f"{name}_{self._kind}", proj)
            setattr(self, f"{name}_bn", layer.BatchNorm1d(o, step_mode="m"))
            setattr(self, f"{name}_lif", lif())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("fc1", "fc2"):
            x = getattr(self, f"{name}_{self._kind}")(x)
            bn = getattr(self, f"{name}_bn")
            x = bn(x.transpose(-1, -2)).transpose(-1, -2) if self.variant == "cifar" else bn(x)
            x = getattr(self, f"{name}_lif")(x)
        return x


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, variant: str) -> None:
        super().__init__()
        self.attn = SSA(dim, num_heads, variant)
        self.mlp = MLP(dim, int(dim * mlp_ratio), variant)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class Spikformer(nn.Module):
    """Spikformer classifier: images ``[B, C, H, W]`` -> logits ``[B, classes]``.

    Example:
        >>> from primesvt_optuna.models import build_model
        >>> model = build_model({"preset": "digits-tiny"})
        >>> model(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        variant: str = "imagenet",
        in_channels: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        T: int = 4,
    ) -> None:
        super().__init__()
        if variant not in ("imagenet", "cifar"):
            raise ValueError(f"unknown Spikformer variant {variant!r}: use 'imagenet' or 'cifar'")
        self.variant = variant
        self.T = T
        pools = (0, 1, 2, 3) if variant == "imagenet" else (2, 3)
        self.patch_embed = SPS(in_channels, embed_dim, pools)
        self.block = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, variant) for _ in range(depth))
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(3)  # [T, B, D, N]
        if self.variant == "cifar":
            x = x.transpose(-1, -2)  # [T, B, N, D]
        for blk in self.block:
            x = blk(x)
        token_dim = 2 if self.variant == "cifar" else 3
        return x.mean(token_dim)  # [T, B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return self.head(self.forward_features(x).mean(0))
