"""State dicts saved by the official Spike-Driven Transformer and QKFormer code, renamed onto
spikingjelly 2.0's classes (the presets' layout), so such a checkpoint loads with ``strict=True``;
and state dicts saved from spikingjelly's own models, which need no renaming but the wrapper's
``net.`` prefix for its ``Spikformer``.

The official code (BICLab/Spike-Driven-Transformer ``model/spikeformer.py``, ``module/*.py``;
zhouchenlin2096/QKFormer ``imagenet/qkformer.py``) names its modules as Spikformer's original code
does; spikingjelly re-implements the same networks with other names and a few layout changes,
each undone here without changing the function the weights compute (in eval mode):

* QKFormer's separate ``q_conv``/``k_conv``(/``v_conv``) and their norms are concatenated into
  spikingjelly's fused ``qk_conv_bn``/``qkv_conv_bn`` (q rows first, then k, then v).
* A 1x1 ``Conv2d`` weight ``[out, in, 1, 1]`` becomes the 1x1 ``Conv1d`` weight ``[out, in, 1]``.
* A bias the official conv has and spikingjelly's lacks (QKFormer's attention ``proj_conv``, a
  conv followed by BatchNorm) is folded into that norm: ``BN(Wx + b)`` is ``BN'(Wx)`` with
  ``running_mean' = running_mean - b``.
* A bias spikingjelly's conv has and the official lacks (the patch-embedding convs of both
  families) is zero.
* Spike-Driven Transformer's ``talking_heads`` conv is created but never used by its forward
  pass: it is dropped.
"""

from __future__ import annotations

import re

import torch

NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

_SDT = [
    (r"^patch_embed\.proj_conv\.", "patch_embed.stages.0.0."), (r"^patch_embed\.proj_bn\.", "patch_embed.stages.0.1."),
    (r"^patch_embed\.proj_conv1\.", "patch_embed.stages.1.0."), (r"^patch_embed\.proj_bn1\.", "patch_embed.stages.1.1."),
    (r"^patch_embed\.proj_conv2\.", "patch_embed.stages.2.0."), (r"^patch_embed\.proj_bn2\.", "patch_embed.stages.2.1."),
    (r"^patch_embed\.proj_conv3\.", "patch_embed.final_stage.0."),
    (r"^patch_embed\.proj_bn3\.", "patch_embed.final_stage.1."),
    (r"^block\.(\d+)\.mlp\.fc([12])_conv\.", r"blocks.\1.mlp.fc\2."),
    (r"^block\.(\d+)\.mlp\.fc([12])_bn\.", r"blocks.\1.mlp.bn\2."),
    (r"^block\.(\d+)\.attn\.", r"blocks.\1.attn."),
]
_QKF = [
    (r"^patch_embed1\.proj_conv\.", "patch_embed1.conv1."), (r"^patch_embed1\.proj_bn\.", "patch_embed1.bn1."),
    (r"^patch_embed1\.proj1_conv\.", "patch_embed1.conv2."), (r"^patch_embed1\.proj1_bn\.", "patch_embed1.bn2."),
    (r"^patch_embed1\.proj2_conv\.", "patch_embed1.conv3."), (r"^patch_embed1\.proj2_bn\.", "patch_embed1.bn3."),
    (r"^(patch_embed[23])\.proj3_conv\.", r"\1.conv1."), (r"^(patch_embed[23])\.proj3_bn\.", r"\1.bn1."),
    (r"^(patch_embed[23])\.proj4_conv\.", r"\1.conv2."), (r"^(patch_embed[23])\.proj4_bn\.", r"\1.bn2."),
    (r"^(patch_embed\d)\.proj_res_conv\.", r"\1.shortcut.0."), (r"^(patch_embed\d)\.proj_res_bn\.", r"\1.shortcut.1."),
    (r"^(stage\d\.\d+)\.tssa\.", r"\1.attn."),
    (r"^(stage\d\.\d+)\.mlp\.fc([12])_conv\.", r"\1.mlp.fc\2."), (r"^(stage\d\.\d+)\.mlp\.fc([12])_bn\.", r"\1.mlp.bn\2."),
    (r"^(stage\d\.\d+\.attn)\.proj_conv\.", r"\1.proj_conv_bn.0."), (r"^(stage\d\.\d+\.attn)\.proj_bn\.", r"\1.proj_conv_bn.1."),
]
# The keys that tell an official state dict from one saved from spikingjelly's classes.
MARKERS = {"spike-driven": "patch_embed.proj_conv.weight", "qkformer": "patch_embed1.proj_conv.weight"}


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, target in rules:  # in order: a block's attention is renamed, then its projection
            key = re.sub(pattern, target, key)
        out[key] = value
    return out


def _fuse(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """QKFormer's separate q/k(/v) convs and norms into spikingjelly's fused ones, proj biases folded."""
    for attn in sorted({k.rsplit(".", 2)[0] for k in state if re.search(r"\.attn\.q_conv\.weight$", k)}):
        names = ("q", "k", "v") if f"{attn}.v_conv.weight" in state else ("q", "k")
        fused = f"{attn}.{'qkv' if len(names) == 3 else 'qk'}_conv_bn"
        state[f"{fused}.0.weight"] = torch.cat([state.pop(f"{attn}.{n}_conv.weight") for n in names])
        for t in NORM:
            parts = [state.pop(f"{attn}.{n}_bn.{t}") for n in names if f"{attn}.{n}_bn.{t}" in state]
            if parts:
                state[f"{fused}.1.{t}"] = parts[0] if t == "num_batches_tracked" else torch.cat(parts)
        bias = state.pop(f"{attn}.proj_conv_bn.0.bias", None)
        if bias is not None and f"{attn}.proj_conv_bn.0.bias" not in expected:
            state[f"{attn}.proj_conv_bn.1.running_mean"] = state[f"{attn}.proj_conv_bn.1.running_mean"] - bias


def to_preset_names(state: dict[str, torch.Tensor], family: str,
                    expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` under the names and shapes of ``expected`` (the preset model's state dict): an
    official Spike-Driven Transformer or QKFormer state dict is converted, one saved from
    spikingjelly's own ``Spikformer`` gets the ``net.`` prefix of this package's wrapper, and any
    other (one saved from spikingjelly's classes or this package's models) is returned as is."""
    if family == "sj-spikformer" and state and not any(k.startswith("net.") for k in state):
        return {f"net.{k}": v for k, v in state.items()}
    if MARKERS.get(family) not in state:
        return state
    state = _rename(state, _SDT if family == "spike-driven" else _QKF)
    state = {k: v for k, v in state.items() if ".talking_heads." not in k}
    if family == "qkformer":
        _fuse(state, expected)
    for key, value in list(state.items()):  # 1x1 Conv2d -> Conv1d weights
        want = expected.get(key)
        if want is not None and value.shape != want.shape and value.numel() == want.numel() and value.dim() == 4:
            state[key] = value.reshape(want.shape)
    for key, want in expected.items():  # biases the official convs do not have
        if key.endswith(".bias") and key not in state and key.removesuffix("bias") + "weight" in state \
                and key.removesuffix("bias") + "running_mean" not in expected:
            state[key] = torch.zeros_like(want, device="cpu")
    return state
