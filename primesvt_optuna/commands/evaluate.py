"""`primesvt evaluate`: re-measure a checkpoint's accuracy on its own recorded data split, or
measure (and convert) a checkpoint saved by the original Spikformer code."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Rebuild the model of a checkpoint and measure its validation and test accuracy on the data spec
recorded in the checkpoint (same split seed, same images). Evaluation is deterministic (eval mode,
fixed order, neuron state reset after every batch), so on the same device it reproduces the
recorded accuracy exactly. CHECKPOINT is a file or the name of a shipped baseline (digits-2-64).

With --preset, CHECKPOINT is instead a state dict saved by the original Spikformer code (the
unused block.*.norm1/norm2 LayerNorm keys and DataParallel `module.` prefixes are dropped, then
it loads strictly); give its data with --data/--data-path, and --output to save it as a primesvt
checkpoint that the search can start from:

  primesvt evaluate spikformer_8_512.pth --preset spikformer-8-512 --data imagefolder \\
      --data-path /data/imagenet --output spikformer-8-512.pt
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="re-measure a checkpoint's accuracy", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file or shipped baseline name")
    p.add_argument("--data-path", default=None, help="where the data set lives on this machine "
                   "(cifar10/cifar100/imagefolder; default: the recorded path)")
    p.add_argument("--split", choices=("val", "test", "both"), default="both", help="which split (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the recorded one, else 256)")
    original = p.add_argument_group("original Spikformer checkpoints")
    original.add_argument("--preset", default=None, help="model preset of an original-layout state dict")
    original.add_argument("--data", default=None, help="its data set: cifar10, cifar100, imagefolder, digits, digits-hard")
    original.add_argument("--img-size", type=int, default=None, help="input size (default: the preset's)")
    original.add_argument("--split-seed", type=int, default=0, help="seed of the val/test split (default %(default)s)")
    original.add_argument("--output", default=None, help="save it as a primesvt checkpoint with the measured accuracy")
    original.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.set_defaults(run=run)


def _accuracy(model, dataset, batch_size: int, device: str, split: str) -> float:
    """``training.evaluate`` with a progress bar (an ImageNet split takes minutes)."""
    from tqdm.auto import tqdm

    from ..training import iter_eval

    correct = total = 0
    with tqdm(total=len(dataset), desc=split, unit="img", leave=False) as bar:
        for c, n in iter_eval(model, dataset, batch_size=batch_size, device=device):
            correct, total = correct + c, total + n
            bar.update(n)
    return correct / total


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import load_checkpoint, load_original, resolve_checkpoint, save_checkpoint
    from ..data import EMBEDDED, check_fits, load_splits, make_spec
    from ..errors import PrimeSVTError
    from ..models import resolve_config
    from ..pruning import model_bytes
    from ..training import EVAL_BATCH_SIZE, torch_device

    torch_device(args.device)
    path = resolve_checkpoint(args.checkpoint)
    if args.preset is None:
        if args.output or args.data:
            raise PrimeSVTError("--data and --output belong to original checkpoints: give --preset as well")
        model, ckpt = load_checkpoint(path, device=args.device)
        spec, recorded, config = dict(ckpt["data"]), ckpt["metrics"], ckpt["model_config"]
        if args.data_path is not None:
            if spec["name"] in EMBEDDED:
                raise PrimeSVTError(f"{path} was trained on the embedded {spec['name']!r} data, which takes no --data-path")
            spec["path"] = args.data_path
    else:
        if not args.data:
            raise PrimeSVTError("an original checkpoint needs --data (and --data-path unless it is embedded)")
        config = resolve_config({"preset": args.preset} | ({"img_size": args.img_size} if args.img_size else {}))
        spec = make_spec(args.data, path=args.data_path, img_size=config["img_size"], seed=args.split_seed)
        if args.output and not args.force and Path(args.output).exists():
            raise PrimeSVTError(f"{args.output} exists: pass --force to overwrite it")
        model, recorded = load_original(path, config).to(args.device), {}
    splits = load_splits(spec)
    check_fits(splits, config, str(path), spec.get("img_size"))
    batch = args.batch_size or recorded.get("eval_batch_size", EVAL_BATCH_SIZE)
    print(f"{path}: {config.get('preset') or config['family']}, {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, {model_bytes(model):,} bytes, data {spec['name']}")
    measured = {}
    for split in ("val", "test") if args.split == "both" or args.output else (args.split,):
        acc = measured[f"{split}_accuracy"] = _accuracy(model, getattr(splits, split), batch, args.device, split)
        before = recorded.get(f"{split}_accuracy")
        note = "" if before is None else (
            "  (recorded, reproduced exactly)" if acc == before else f"  (recorded {before:.4f}, differs by {acc - before:+.4f})"
        )
        print(f"{split:>4} accuracy {acc:.4f}  [{len(getattr(splits, split))} images]{note}")
    if args.output:
        sizes = splits.sizes()
        metrics = {**measured, "val_images": sizes["val"], "test_images": sizes["test"], "eval_batch_size": batch}
        save_checkpoint(args.output, model.cpu(), config, spec, metrics, meta={"converted_from": str(path)}, force=args.force)
        print(f"saved {args.output}")
    return 0
