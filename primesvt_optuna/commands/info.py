"""`primesvt info`: the layer table of a checkpoint or a preset, largest layer first."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Print the model config, size and recorded accuracy of a checkpoint (a file or a shipped baseline
name such as digits-2-64) or of an untrained preset, then every prunable layer with its parameter
count and bytes, from the largest to the smallest: the order PrimeSVT's prioritized walk follows.
`primesvt info --list` lists the presets and shipped baselines.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "info", help="layer table of a checkpoint or preset", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="CHECKPOINT_OR_PRESET", nargs="?", default="digits-2-64",
                   help="checkpoint file, shipped baseline or preset name (default %(default)s)")
    p.add_argument("--list", action="store_true", help="list presets and shipped baselines, then exit")
    p.add_argument("--top", type=int, default=None, help="show only the N largest layers")
    p.set_defaults(run=run)


def _stages(value: object) -> str:
    """A per-stage list (QKFormer, MaxFormer) as ``1-2-7``, anything else as it is."""
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _list() -> None:
    from ..checkpoint import shipped_names
    from ..models import PRESETS

    print("presets:")
    for name, c in PRESETS.items():
        depth, heads = (_stages(c.get(k, "-")) for k in ("depth", "num_heads"))
        print(f"  {name:<26} {c['family']:<14} dim {c['embed_dim']:<4} depth {depth:<6} "
              f"heads {heads:<8} img {c['img_size']:<4} classes {c['num_classes']}")
    print("shipped baselines:", ", ".join(shipped_names()) or "none")


def run(args: argparse.Namespace) -> int:
    if args.list:
        _list()
        return 0
    import pandas as pd
    import torch.nn as nn

    from ..checkpoint import load_checkpoint, resolve_checkpoint, shipped_names
    from ..errors import PrimeSVTError
    from ..models import PRESETS, build_model, resolve_config
    from ..pruning import Engine, model_bytes, param_bytes

    if args.top is not None and args.top < 1:
        raise PrimeSVTError(f"--top must be at least 1, got {args.top}")
    path = resolve_checkpoint(args.target)
    pruned = False
    if path.exists():
        model, ckpt = load_checkpoint(path)
        config = ckpt["model_config"]
        print(f"checkpoint {path}")
        m = ckpt["metrics"]
        if "val_accuracy" in m:
            print(f"accuracy: val {m['val_accuracy']:.4f}, test {m.get('test_accuracy', float('nan')):.4f} "
                  f"on {ckpt['data']['name']} (split seed {ckpt['data']['seed']})")
        pruned = ckpt["structure"] is not None
        print(f"pruned: {'yes' if pruned else 'no'}")
    elif args.target in PRESETS:
        config = resolve_config({"preset": args.target})
        model = build_model(config)
        print(f"preset {args.target} (untrained)")
    else:
        raise PrimeSVTError(f"{args.target!r} is no checkpoint file, shipped baseline ({', '.join(shipped_names())}) "
                            f"or preset (see `primesvt info --list`)")
    print("config: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {params:,}  parameter bytes: {param_bytes(model):,}  model bytes (with buffers): {model_bytes(model):,}")
    if pruned:  # the prunable-layer table belongs to the original model: show the widths kept
        table = pd.DataFrame([
            {"module": name, "type": type(m).__name__, "out": getattr(m, "out_features", getattr(m, "out_channels", None)),
             "params": sum(p.numel() for p in m.parameters(recurse=False))}
            for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
        ]).sort_values("params", ascending=False, kind="stable")
    else:
        table = Engine(model).table
    if args.top:
        table = table.head(args.top)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string(index=False))
    return 0
