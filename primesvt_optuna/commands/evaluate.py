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

A pruned checkpoint written by `primesvt export` from a confirmed study records its promise (the
accuracy budget, kept at 95% on held-back images). evaluate re-checks it on the data given here:
the unpruned source model (the path and SHA-256 recorded at export; --source when it moved) and the
pruned one see the same images, and the paired bound on the drop says whether the promise holds
on them. The test split and data you bring (--data-path) are fair judges; the validation split
holds the images the study searched and confirmed on. Exit 0 either way.
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
    p.add_argument("--source", default=None,
                   help="the unpruned checkpoint a confirmed export was pruned from, when it moved (its hash must match)")
    original = p.add_argument_group("original Spikformer checkpoints")
    original.add_argument("--preset", default=None, help="model preset of an original-layout state dict")
    original.add_argument("--data", default=None, help="its data set: cifar10, cifar100, imagefolder, digits, digits-hard")
    original.add_argument("--img-size", type=int, default=None, help="input size (default: the preset's)")
    original.add_argument("--split-seed", type=int, default=0, help="seed of the val/test split (default %(default)s)")
    original.add_argument("--output", default=None, help="save it as a primesvt checkpoint with the measured accuracy")
    original.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.set_defaults(run=run)


def _correct(model, dataset, batch_size: int, device: str, split: str) -> list[bool]:
    """Per-image correctness as ``training.evaluate`` counts it, with a progress bar (an ImageNet
    split takes minutes)."""
    from tqdm.auto import tqdm

    from ..training import iter_correct

    right: list[bool] = []
    with tqdm(total=len(dataset), desc=split, unit="img", leave=False) as bar:
        for batch in iter_correct(model, dataset, batch_size=batch_size, device=device):
            right += batch.tolist()
            bar.update(len(batch))
    return right


def _source(path, meta: dict, given: str | None, device: str):
    """The unpruned model a confirmed export was pruned from: ``given`` or the recorded path, its
    SHA-256 checked against the recorded one."""
    from ..checkpoint import checkpoint_sha256, load_checkpoint, resolve_checkpoint
    from ..errors import PrimeSVTError

    where = given or meta.get("source_checkpoint")
    if not where:
        raise PrimeSVTError(f"{path} does not record its unpruned source checkpoint: pass --source")
    source = resolve_checkpoint(where)
    if not source.exists():
        raise PrimeSVTError(f"the unpruned source of {path}, {source}, does not exist: pass --source")
    if checkpoint_sha256(source) != meta.get("source_checkpoint_sha256"):
        raise PrimeSVTError(f"{source} is not the checkpoint {path} was pruned from (SHA-256 differs): pass the "
                            "original with --source")
    return load_checkpoint(source, device=device)[0]


def recheck_line(split: str, reference: list[bool], pruned: list[bool], meta: dict) -> str:
    """The promise re-checked on one split: the paired bound of the drop and whether it holds."""
    from ..acceptance.confirm import judge
    from ..plugin.constraints import Constraints

    constraints = Constraints.from_dict(meta["constraints"])
    level = f"{100 * constraints.confidence:g}%"
    v = judge(reference, pruned, constraints, constraints.confidence)
    drop = 100 * (v.base_accuracy - v.accuracy)
    if constraints.min_accuracy is not None:
        bound = f"accuracy at least {100 * v.bound:.2f}% at {level} (floor {100 * constraints.min_accuracy:.2f}%)"
    else:
        bound = f"drop at most {100 * v.bound:.2f} points at {level} (budget {100 * constraints.max_accuracy_drop:.2f})"
    verdict = ("the promise holds on these images" if v.passed else
               "the promise is NOT confirmed on these images (too few, or the model lost more than the budget)")
    note = "; this split holds the images the study searched and confirmed on" if split == "val" else ""
    return (f"re-check on {split} ({v.images} images, unpruned {100 * v.base_accuracy:.2f}%, measured drop "
            f"{drop:.2f} points): {bound}: {verdict}{note}")


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
    meta = {} if args.preset is not None else ckpt.get("meta") or {}
    source = _source(path, meta, args.source, args.device) if meta.get("confirmation") else None
    for split in ("val", "test") if args.split == "both" or args.output else (args.split,):
        right = _correct(model, getattr(splits, split), batch, args.device, split)
        acc = measured[f"{split}_accuracy"] = sum(right) / len(right)
        before = recorded.get(f"{split}_accuracy")
        note = "" if before is None else (
            "  (recorded, reproduced exactly)" if acc == before else f"  (recorded {before:.4f}, differs by {acc - before:+.4f})"
        )
        print(f"{split:>4} accuracy {acc:.4f}  [{len(getattr(splits, split))} images]{note}")
        if source is not None:
            reference = _correct(source, getattr(splits, split), batch, args.device, f"{split} (unpruned)")
            print(recheck_line(split, reference, right, meta))
    if args.output:
        sizes = splits.sizes()
        metrics = {**measured, "val_images": sizes["val"], "test_images": sizes["test"], "eval_batch_size": batch}
        save_checkpoint(args.output, model.cpu(), config, spec, metrics, meta={"converted_from": str(path)}, force=args.force)
        print(f"saved {args.output}")
    return 0
