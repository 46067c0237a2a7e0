"""Named model presets (timm-style) and the one function that builds a model from a config.

A model config is a plain dict: ``{"preset": name, **overrides}``. It is saved with the weights,
so a checkpoint alone rebuilds its model. ``resolve_config`` fills in the preset's values;
``build_model`` dispatches on ``family``:

* ``spikformer``: this package's Spikformer (original names, both variants);
* ``sj-spikformer``: spikingjelly 2.0's own ``model.spikformer.Spikformer`` (a second,
  independently written SViT the pruning engine also supports);
* ``spike-driven``, ``qkformer``, ``maxformer``: spikingjelly 2.0's ``SpikeDrivenTransformer``,
  ``QKFormer`` and ``MaxFormer``, built with spikingjelly's own classes (``depth`` and, for
  QKFormer, ``num_heads`` are per-stage lists for the hierarchical families).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch.nn as nn

from ..errors import PrimeSVTError

_PAPER = dict(family="spikformer", mlp_ratio=4.0, T=4)
_IMAGENET = dict(_PAPER, variant="imagenet", in_channels=3, num_classes=1000, img_size=224)
_CIFAR = dict(_PAPER, variant="cifar", in_channels=3, img_size=32)
_DIGITS = dict(_PAPER, variant="cifar", in_channels=1, num_classes=10, img_size=16)

PRESETS: dict[str, dict[str, Any]] = {
    # Published configurations (name = blocks-embedding dim), exact original layouts.
    "spikformer-4-384-cifar10": dict(_CIFAR, num_classes=10, embed_dim=384, depth=4, num_heads=12),
    "spikformer-4-384-cifar100": dict(_CIFAR, num_classes=100, embed_dim=384, depth=4, num_heads=12),
    "spikformer-8-384": dict(_IMAGENET, embed_dim=384, depth=8, num_heads=12),
    "spikformer-6-512": dict(_IMAGENET, embed_dim=512, depth=6, num_heads=8),
    "spikformer-8-512": dict(_IMAGENET, embed_dim=512, depth=8, num_heads=8),
    "spikformer-10-512": dict(_IMAGENET, embed_dim=512, depth=10, num_heads=8),
    "spikformer-8-768": dict(_IMAGENET, embed_dim=768, depth=8, num_heads=12),
    # Small presets for the embedded digits data (16x16 input -> 4x4 = 16 tokens).
    "digits-tiny": dict(_DIGITS, embed_dim=32, depth=1, num_heads=2),
    "digits-2-64": dict(_DIGITS, embed_dim=64, depth=2, num_heads=4),
    "digits-2-96": dict(_DIGITS, embed_dim=96, depth=2, num_heads=4, img_size=32),
    # Paper-shaped: 8 blocks like Spikformer-8-512, so the blocks hold ~87% of the parameters
    # (8-512: 85%) instead of the 2-block presets' ~61%, with the same 16 tokens.
    "digits-8-64": dict(_DIGITS, embed_dim=64, depth=8, num_heads=4),
    # spikingjelly's built-in Spikformer (fused qkv, bias-free Conv1d MLP, head over T).
    "sj-spikformer-tiny": dict(
        family="sj-spikformer", in_channels=1, num_classes=10, img_size=16, patch_size=4,
        embed_dim=32, depth=1, num_heads=2, mlp_ratio=4.0, T=4,
    ),
    "sj-spikformer-cifar10": dict(
        family="sj-spikformer", in_channels=3, num_classes=10, img_size=32, patch_size=4,
        embed_dim=384, depth=4, num_heads=12, mlp_ratio=4.0, T=4,
    ),
}

_SDT = dict(family="spike-driven", in_channels=3, num_classes=1000, img_size=224, mlp_ratio=4.0, T=4, pooling_stat="1111")
_QKF = dict(family="qkformer", in_channels=3, num_classes=1000, img_size=224, mlp_ratio=4.0, T=4, qka_type="token",
            depth=[1, 2, 7])
_MAX = dict(family="maxformer", in_channels=3, num_classes=1000, img_size=224, mlp_ratio=4.0, T=4, cifar=False,
            depth=[1, 2, 7])
PRESETS.update({
    # Spike-Driven Transformer v1 (name = blocks-embedding dim); CIFAR: patch 4 (pooling "0011").
    "sdt-8-384": dict(_SDT, embed_dim=384, depth=8, num_heads=8),
    "sdt-8-512": dict(_SDT, embed_dim=512, depth=8, num_heads=8),
    "sdt-8-768": dict(_SDT, embed_dim=768, depth=8, num_heads=8),
    "sdt-2-512-cifar10": dict(_SDT, embed_dim=512, depth=2, num_heads=8, num_classes=10, img_size=32, pooling_stat="0011"),
    # QKFormer (blocks per stage 1, 2, 7; widths D/4, D/2, D); the CIFAR one: 4 blocks, 1, 1, 2.
    "qkformer-10-384": dict(_QKF, embed_dim=384, num_heads=[6, 6, 6]),
    "qkformer-10-512": dict(_QKF, embed_dim=512, num_heads=[8, 8, 8]),
    "qkformer-10-768": dict(_QKF, embed_dim=768, num_heads=[12, 12, 12]),
    "qkformer-4-384-cifar10": dict(_QKF, embed_dim=384, num_heads=[8, 8, 8], depth=[1, 1, 2], num_classes=10, img_size=32),
    # MaxFormer (DWC blocks in stages 1-2, SSA in stage 3); maxformer-cifar is spikingjelly's maxformer_cifar.
    "maxformer-10-384": dict(_MAX, embed_dim=384),
    "maxformer-10-512": dict(_MAX, embed_dim=512),
    "maxformer-10-768": dict(_MAX, embed_dim=768),
    "maxformer-cifar": dict(_MAX, embed_dim=384, depth=[1, 1, 2], cifar=True, num_classes=100, img_size=32),
    # Digits baselines shaped like digits-8-64 (8 blocks hold most of the bytes, 4x4 tokens at the end).
    "digits-sdt-8-64": dict(_SDT, in_channels=1, num_classes=10, img_size=16, embed_dim=64, depth=8, num_heads=4,
                            pooling_stat="0011"),
    "digits-qkformer-8-64": dict(_QKF, in_channels=1, num_classes=10, img_size=64, embed_dim=64, depth=[1, 1, 6],
                                 num_heads=[1, 2, 4]),
})

_COMMON = {"family", "in_channels", "num_classes", "img_size", "embed_dim", "depth", "mlp_ratio", "T"}
_KEYS = {
    "spikformer": {"family", "variant", "in_channels", "num_classes", "img_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "T"},
    "sj-spikformer": {"family", "in_channels", "num_classes", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "T"},
    "spike-driven": _COMMON | {"num_heads", "pooling_stat"},
    "qkformer": _COMMON | {"num_heads", "qka_type"},
    "maxformer": _COMMON | {"cifar"},
}
_STAGED = ("qkformer", "maxformer")  # depth (and QKFormer's num_heads) per stage


def _check_widths(c: dict[str, Any]) -> None:
    """Widths every family's constructor needs, as one clear line instead of its ValueError."""
    dim, family = c["embed_dim"], c["family"]
    if family in _STAGED:
        for key in ("depth", "num_heads") if family == "qkformer" else ("depth",):
            if not (isinstance(c[key], (list, tuple)) and len(c[key]) == 3):
                raise PrimeSVTError(f"{key} of a {family} model is a list of three stage values, got {c[key]!r}")
        step = 8 if family == "maxformer" and c["cifar"] else 4
        widths = [(dim // 4, h) for h in c["num_heads"][:1]] + [(dim // 2, c["num_heads"][1]), (dim, c["num_heads"][2])] \
            if family == "qkformer" else []
        if dim % step or any(w % h for w, h in widths):
            raise PrimeSVTError(f"embed_dim {dim} must be divisible by {step}"
                                + (f" and each stage width by its num_heads {c['num_heads']}" if widths else ""))
        return
    if family == "spike-driven" and not (len(c["pooling_stat"]) == 4 and set(c["pooling_stat"]) <= {"0", "1"}):
        raise PrimeSVTError(f"pooling_stat is four 0/1 characters (which patch-embedding stages pool), got {c['pooling_stat']!r}")
    if dim % c["num_heads"] or dim % 8:
        raise PrimeSVTError(f"embed_dim {dim} must be divisible by 8 and by num_heads {c['num_heads']}")


def resolve_config(config: dict[str, Any]) -> dict[str, Any]:
    """Preset values overridden by the config's own keys; unknown presets/keys are errors."""
    config = dict(config)
    name = config.pop("preset", None)
    if name is not None and name not in PRESETS:
        close = difflib.get_close_matches(str(name), PRESETS, n=3)
        raise PrimeSVTError(f"unknown preset {name!r}: " + (f"did you mean {', '.join(close)}? " if close else "")
                            + f"`primesvt info --list` lists all {len(PRESETS)}")
    resolved = {**PRESETS.get(name, {}), **config}
    family = resolved.get("family")
    if family not in _KEYS:
        raise PrimeSVTError(f"model config needs a preset or a family ({', '.join(_KEYS)}), got {config!r}")
    unknown = set(resolved) - _KEYS[family]
    missing = _KEYS[family] - set(resolved)
    if unknown or missing:
        raise PrimeSVTError(
            f"model config for family {family!r}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}"
        )
    _check_widths(resolved)
    return {"preset": name, **resolved} if name else resolved


def build_model(config: dict[str, Any]) -> nn.Module:
    """A freshly initialised (unpruned) model for ``config``; see ``resolve_config``."""
    c = resolve_config(config)
    if c["family"] == "spikformer":
        from .spikformer import Spikformer

        return Spikformer(
            variant=c["variant"], in_channels=c["in_channels"], num_classes=c["num_classes"],
            embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["num_heads"],
            mlp_ratio=c["mlp_ratio"], T=c["T"],
        )
    if c["family"] == "sj-spikformer":
        from .sj_spikformer import SJSpikformer

        return SJSpikformer(c)
    from .sj_families import build_sj

    return build_sj(c)
