"""`primesvt evaluate`: re-measure a checkpoint's accuracy on its own recorded data split."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Rebuild the model of a checkpoint and measure its validation and test accuracy on the data spec
recorded in the checkpoint (same split seed, same images). Evaluation is deterministic (eval mode,
fixed order, neuron state reset after every batch), so on the same device it reproduces the
recorded accuracy exactly. CHECKPOINT is a file or the name of a shipped baseline (digits-2-64).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="re-measure a checkpoint's accuracy", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or shipped baseline name")
    p.add_argument("--data-path", default=None, help="where the checkpoint's data set lives on this machine "
                   "(cifar10/cifar100/imagefolder; default: the recorded path)")
    p.add_argument("--split", choices=("val", "test", "both"), default="both", help="which split (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the recorded one)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import load_checkpoint, resolve_checkpoint
    from ..data import EMBEDDED, load_splits
    from ..errors import PrimeSVTError
    from ..training import EVAL_BATCH_SIZE, evaluate

    path = resolve_checkpoint(args.checkpoint)
    model, ckpt = load_checkpoint(path, device=args.device)
    spec = dict(ckpt["data"])
    if args.data_path is not None:
        if spec["name"] in EMBEDDED:
            raise PrimeSVTError(f"{path} was trained on the embedded {spec['name']!r} data, which takes no --data-path")
        spec["path"] = args.data_path
    splits = load_splits(spec)
    batch = args.batch_size or ckpt["metrics"].get("eval_batch_size", EVAL_BATCH_SIZE)
    print(f"{path}: {ckpt['model_config'].get('preset') or ckpt['model_config']['family']}, "
          f"{ckpt['params']:,} parameters, {ckpt['model_bytes']:,} bytes, data {spec['name']}")
    for split in ("val", "test") if args.split == "both" else (args.split,):
        acc = evaluate(model, getattr(splits, split), batch_size=batch, device=args.device)
        recorded = ckpt["metrics"].get(f"{split}_accuracy")
        note = "" if recorded is None else (
            "  (recorded, reproduced exactly)" if acc == recorded else f"  (recorded {recorded:.4f}, differs by {acc - recorded:+.4f})"
        )
        print(f"{split:>4} accuracy {acc:.4f}  [{len(getattr(splits, split))} images]{note}")
    return 0
