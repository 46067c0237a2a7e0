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

import contextvars
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.nn.modules.utils import _pair
from spikingjelly.activation_based import layer, neuron

# The pruning engine (pruning/structure.py) keeps a pruned residual writer's kept channels in an
# index buffer of this name on the writer's last module, with a forward hook that scatters them
# into a zero tensor of the stream's width. While ``_INDEX_WRITES`` is set, those hooks leave the
# kept channels as they are and the forward pass below adds them into the stream itself
# (``index_add``: no zero tensor, no full-width scatter, no separate add). Code that calls a
# branch on its own (e.g. the robustness sweep's stages) still gets the full-width branch.
SCATTER_INDEX = "primesvt_scatter_index"
_INDEX_WRITES: contextvars.ContextVar[bool] = contextvars.ContextVar("primesvt_index_writes", default=False)


def index_writes_here() -> bool:
    """True inside a Spikformer forward pass that writes pruned residual branches by index."""
    return _INDEX_WRITES.get()


def _by_index(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> torch.Tensor:
    token = _INDEX_WRITES.set(True)
    try:
        return fn(*args)
    finally:
        _INDEX_WRITES.reset(token)


def _stream_add(stream: torch.Tensor, branch: torch.Tensor, site: nn.Module, dim: int) -> torch.Tensor:
    """``stream + branch``, the branch's kept channels added at their stream positions when pruned."""
    index = getattr(site, SCATTER_INDEX, None)
    return stream + branch if index is None else stream.index_add(dim, index, branch)


def _widen(x: torch.Tensor, site: nn.Module, dim: int, width: int) -> torch.Tensor:
    """``x`` at the stream's full width (zeros where a pruned writer removed channels)."""
    index = getattr(site, SCATTER_INDEX, None)
    if index is None:
        return x
    shape = list(x.shape)
    shape[dim] = width
    return x.new_zeros(shape).index_copy_(dim, index, x)


class LIFNode(neuron.LIFNode):
    """spikingjelly's ``LIFNode`` with a lean CPU inference loop: the same arithmetic, the same spikes.

    On CPU spikingjelly runs its Python reference loop: per time step about a dozen elementwise
    passes (the surrogate's ``h - threshold``, ``spike * reset + (1 - spike) * h``, the charge kept
    for a backward pass, bool-to-float copies, two stacks), which made the neurons, not the
    convolutions, the larger part of a CPU forward pass. Without autograd this class computes
    ``h = v + (x - v) / tau``, ``spike = h >= threshold`` and the hard reset in four passes over
    preallocated buffers; spikes and membrane potential are bit-identical to spikingjelly's
    (``tests/test_flops.py``). Training, CUDA (spikingjelly's fused kernels), a reset other than
    the hard reset to 0, ``decay_input=False``, ``store_v_seq`` and explicit neuron precision take spikingjelly's own
    path. The class keeps spikingjelly's name, so code that looks for ``LIFNode`` still finds it.
    """

    def _lean(self, x_seq: torch.Tensor) -> bool:
        return (x_seq.device.type in ("cpu", "meta") and x_seq.is_floating_point() and x_seq.dim() >= 2
                and self.v_reset == 0.0 and self.decay_input and not self.store_v_seq
                and self._neuron_precision is None and not (torch.is_grad_enabled() and x_seq.requires_grad))

    def multi_step_forward(self, x_seq: torch.Tensor, *args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if args or kwargs or not self._lean(x_seq):
            return super().multi_step_forward(x_seq, *args, **kwargs)
        if x_seq.device.type == "meta":  # shapes only (FLOP prediction): nothing to compute
            self._memories["v"] = x_seq.new_empty(x_seq.shape[1:])
            self.v_seq = None
            return x_seq.new_empty(x_seq.shape)
        state, shape, device = self._memories["v"], x_seq.shape[1:], x_seq.device
        if isinstance(state, torch.Tensor) and state.shape == shape:
            v = state.to(device=device, dtype=x_seq.dtype, copy=True).contiguous()
        else:  # a float state, or a tensor of another shape (spikingjelly restarts that from v_reset)
            value = self.v_reset if isinstance(state, torch.Tensor) else float(state)
            v = torch.full(shape, value, dtype=x_seq.dtype, device=device)
        out = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=device)
        d = torch.empty_like(v)
        for t in range(x_seq.shape[0]):
            torch.sub(x_seq[t], v, out=d).div_(self.tau)
            v.add_(d)  # h = v + (x - v) / tau, rounded as spikingjelly rounds it
            spike = out[t]
            torch.ge(v, self.v_threshold, out=spike)  # = (h - threshold >= 0), spikingjelly's heaviside
            v.addcmul_(v, spike, value=-1.0)  # h - h * spike = spike * 0 + (1 - spike) * h, exactly
        self._memories["v"] = v
        self.v_seq = None
        return out


def _max3s2(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over positions ``2i-1, 2i, 2i+1`` along ``dim`` (even length, -inf padding): ``n/2`` outputs."""
    n = x.shape[dim]
    step = lambda start, stop: x[(slice(None),) * dim + (slice(start, stop, 2),)]  # noqa: E731
    out = torch.maximum(step(0, n), step(1, n))  # max(x[2i], x[2i+1])
    if n > 2:
        tail = out[(slice(None),) * dim + (slice(1, None),)]
        torch.maximum(tail, step(1, n - 1), out=tail)  # and x[2i-1] from i = 1 on
    return out


class MaxPool2d(layer.MaxPool2d):
    """spikingjelly's multi-step ``MaxPool2d``; on CPU without autograd, the 3x3/2 pooling with
    padding 1 of the SPS as two 1-D passes of elementwise maxima over strided views.

    PyTorch's CPU max pooling of an NCHW tensor computes int64 indices plane by plane; on the
    small planes of the SPS (16x16 for digits-2-64) it took longer than the convolution before it.
    Rows then columns, each output the maximum of positions ``2i-1, 2i, 2i+1``, is 3-6x faster on
    every SPS shape and exact: a maximum is the same whatever order it is taken in (NaN included).
    Other settings, odd sizes, CUDA and autograd use spikingjelly's path.
    """

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        settings = (_pair(self.kernel_size), _pair(self.stride or self.kernel_size), _pair(self.padding),
                    _pair(self.dilation), self.ceil_mode, self.return_indices)
        if (self.step_mode != "m" or x_seq.device.type != "cpu" or x_seq.dim() != 5
                or settings != ((3, 3), (2, 2), (1, 1), (1, 1), False, False)
                or x_seq.shape[-1] % 2 or x_seq.shape[-2] % 2 or x_seq.shape[-1] < 2 or x_seq.shape[-2] < 2
                or (torch.is_grad_enabled() and x_seq.requires_grad)):
            return super().forward(x_seq)
        return _max3s2(_max3s2(x_seq, 3), 4).contiguous()


def lif(v_threshold: float = 1.0) -> LIFNode:
    """The original's ``MultiStepLIFNode(tau=2.0, detach_reset=True)``."""
    return LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")


class SPS(nn.Module):
    """Spiking patch splitting: four conv stages, then a conv relative position encoding."""

    def __init__(self, in_channels: int, embed_dim: int, pool_stages: tuple[int, ...]) -> None:
        super().__init__()
        widths = [in_channels, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
        suffixes = ["", "1", "2", "3"]
        self.pool_stages = pool_stages
        self.embed_dim = embed_dim
        for i, s in enumerate(suffixes):
            setattr(self, f"proj_conv{s}", layer.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False, step_mode="m"))
            setattr(self, f"proj_bn{s}", layer.BatchNorm2d(widths[i + 1], step_mode="m"))
            setattr(self, f"proj_lif{s}", lif())
            if i in pool_stages:
                setattr(self, f"maxpool{s}", MaxPool2d(3, 2, 1, step_mode="m"))
        self.rpe_conv = layer.Conv2d(embed_dim, embed_dim, 3, 1, 1, bias=False, step_mode="m")
        self.rpe_bn = layer.BatchNorm2d(embed_dim, step_mode="m")
        self.rpe_lif = lif()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, C, H, W]`` images to ``[T, B, D, H', W']`` spikes."""
        return _by_index(self._forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, s in enumerate(["", "1", "2", "3"]):
            x = getattr(self, f"proj_lif{s}")(getattr(self, f"proj_bn{s}")(getattr(self, f"proj_conv{s}")(x)))
            if i in self.pool_stages:
                x = getattr(self, f"maxpool{s}")(x)
        # x_feat: proj_conv3's kept channels only when it is pruned; rpe_conv's inputs are exactly
        # those (the engine removes the same channels from both), so it reads x_feat as it is
        x_feat = x
        x = self.rpe_lif(self.rpe_bn(self.rpe_conv(x_feat)))
        last = getattr(self, "maxpool3" if 3 in self.pool_stages else "proj_lif3")
        return _stream_add(_widen(x_feat, last, 2, self.embed_dim), x, self.rpe_lif, 2)


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
        self.channel_dim = 3 if variant == "cifar" else 2  # of the [T, B, N, C] / [T, B, C, N] tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _stream_add(x, _by_index(self.attn, x), self.attn.proj_lif, self.channel_dim)
        return _stream_add(x, _by_index(self.mlp, x), self.mlp.fc2_lif, self.channel_dim)


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
            # [T, B, N, D], laid out once: the projections would copy a transposed stream each time
            x = x.transpose(-1, -2).contiguous()
        for blk in self.block:
            x = blk(x)
        token_dim = 2 if self.variant == "cifar" else 3
        return x.mean(token_dim)  # [T, B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return self.head(self.forward_features(x).mean(0))
