"""`primesvt robustness`: step 2 of PrimeSVT, every layer pruned alone at every grid rate."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Prune each layer of a checkpoint alone at each rate of a grid and measure validation accuracy.
Prints the table (accuracy drop in points, layers largest first), the target layers with their
robustness bound (the highest rate within the tolerance), and writes a heatmap. Results are
cached on disk ($PRIMESVT_CACHE or ~/.cache/primesvt), keyed by the checkpoint's content hash,
the data split, the evaluation subset, the batch size, the grid and the engine version.

The rates of one layer share the network before that layer: it runs once per batch, and only the
rest of the network runs per rate (bit-identical to evaluating each pruned model on its own;
--no-prefix-sharing does that, for comparison).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("robustness", help="per-layer robustness sweep and heatmap",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or shipped baseline name")
    p.add_argument("--grid", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="comma-separated rates in [0, 1) (default %(default)s)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.03,
                   help="tolerance that makes a layer a target, as a fraction (default %(default)s)")
    p.add_argument("--rule", choices=["highest", "contiguous"], default="highest",
                   help="bound = highest passing rate, or highest rate below which all pass")
    p.add_argument("--subset", type=int, default=None, help="evaluate on a fixed seeded subset of N validation images")
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-path", default=None, help="data location when it moved since training")
    p.add_argument("--figure", default="robustness.png", help="heatmap path (PNG/SVG by suffix)")
    p.add_argument("--csv", default=None, help="also write the table as CSV")
    p.add_argument("--force", action="store_true", help="overwrite --figure and --csv if they exist")
    p.add_argument("--no-cache", action="store_true", help="recompute even when a cached sweep exists")
    p.add_argument("--no-prefix-sharing", action="store_true",
                   help="evaluate every pruned model from the input (same table, slower; for comparison)")
    p.set_defaults(run=run)


def parse_grid(text: str) -> list[float]:
    from ..errors import PrimeSVTError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PrimeSVTError(f"--grid must be comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    from matplotlib.backend_bases import FigureCanvasBase

    from ..checkpoint import checkpoint_sha256, load_checkpoint, resolve_checkpoint
    from ..data import check_fits, load_splits, subset
    from ..errors import PrimeSVTError
    from ..pruning import Engine
    from ..pruning.robustness import (
        SharedPrefixEvaluator, cache_key, cached_sweep, check_grid, plot_robustness, robustness_bounds, robustness_sweep,
    )
    from ..training import torch_device
    from . import output_file

    if not 0 <= args.max_accuracy_drop < 1:
        raise PrimeSVTError(f"--max-accuracy-drop is a fraction in [0, 1), got {args.max_accuracy_drop}")
    if args.batch_size < 1:
        raise PrimeSVTError(f"--batch-size must be at least 1, got {args.batch_size}")
    torch_device(args.device)
    grid = check_grid(parse_grid(args.grid))
    output_file(args.figure, "--figure", tuple(f".{s}" for s in FigureCanvasBase.get_supported_filetypes()),
                force=args.force)
    if args.csv:
        output_file(args.csv, "--csv", force=args.force)
    path = resolve_checkpoint(args.checkpoint)
    model, ckpt = load_checkpoint(path, args.device)
    if ckpt["structure"] is not None:
        raise PrimeSVTError(f"{path} is already pruned: run the sweep on the original checkpoint")
    spec = dict(ckpt["data"], **({"path": args.data_path} if args.data_path else {}))
    splits = load_splits(spec)
    check_fits(splits, ckpt["model_config"], str(path), spec.get("img_size"))
    val = subset(splits.val, args.subset, args.subset_seed)
    engine = Engine(model)

    score = SharedPrefixEvaluator(val, batch_size=args.batch_size, device=args.device,
                                  share=not args.no_prefix_sharing)

    base = score(model)
    if args.no_cache:
        table, hit = robustness_sweep(engine, score, grid, base), False
    else:
        key = cache_key(checkpoint=checkpoint_sha256(path), data={k: v for k, v in spec.items() if k != "path"},
                        subset=args.subset, subset_seed=args.subset_seed, batch_size=args.batch_size, grid=grid)
        table, hit = cached_sweep(engine, score, key, grid, base)
    print(f"unpruned validation accuracy {base:.4f} on {len(val)} images" + (" (sweep from cache)" if hit else ""))
    drops = table.pivot(index="layer", columns="rate", values="accuracy_drop").loc[list(dict.fromkeys(table.layer))]
    with pd.option_context("display.max_rows", None, "display.width", 250, "display.float_format", "{:.1f}".format):
        print("accuracy drop (points) when the layer alone is pruned at each rate:")
        print((drops * 100).to_string())
    bounds = robustness_bounds(table, args.max_accuracy_drop, args.rule)
    print(f"targets ({len(bounds)} of {len(engine.layers)} layers within {args.max_accuracy_drop:.1%}, rule {args.rule}):")
    for layer in engine.layers:
        if layer in bounds:
            print(f"  {layer:<40} bound {bounds[layer]:.2f}")
    plot_robustness(table, args.figure, title=f"Layer robustness: {path.name}")
    print(f"heatmap written to {args.figure}")
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"table written to {args.csv}")
    return 0
