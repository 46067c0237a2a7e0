"""`primesvt train`: train a baseline from a preset on a data set and write its checkpoint."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Train a Spikformer preset from scratch (AdamW, warm-up + cosine schedule, label smoothing) and
write a checkpoint holding the weights, the model config, the data spec with its split seed,
the final validation and test accuracy, the parameter count and bytes. The same arguments on
the same machine give the same checkpoint, so the shipped baselines are reproducible (the
defaults are their recipe):

  primesvt train --preset digits-2-64 --data digits --output digits-2-64.pt
  primesvt train --preset digits-2-64 --data digits-hard --output digits-hard-2-64.pt

The published presets need far longer training on a GPU, for example:

  primesvt train --preset spikformer-4-384-cifar10 --data cifar10 --data-path DIR \\
      --epochs 300 --lr 5e-4 --device cuda --output cifar10.pt

On a machine shared with other jobs, export OMP_WAIT_POLICY=PASSIVE first: with OpenMP's default
busy-waiting, two CPU-bound torch processes on two cores can each run 10-40x slower.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a baseline and write its checkpoint", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", default="digits-2-64", help="model preset (see `primesvt info PRESET`; default %(default)s)")
    p.add_argument("--data", default="digits", help="digits, digits-hard, cifar10, cifar100 or imagefolder "
                   "(default %(default)s)")
    p.add_argument("--data-path", default=None, help="folder of cifar10/cifar100/imagefolder data (see docs/foundation.md)")
    p.add_argument("--img-size", type=int, default=None, help="input size in pixels (default: the preset's)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split (default %(default)s)")
    p.add_argument("--epochs", type=int, default=25, help="training epochs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=4e-3, help="peak AdamW learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="label smoothing (default %(default)s)")
    p.add_argument("--augment-shift", type=int, default=1, help="random translation of training images by up to "
                   "this many pixels; 0 disables it (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and batch order (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default %(default)s)")
    p.add_argument("--output", "-o", required=True, help="checkpoint file to write")
    p.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def reproduce_command(args: argparse.Namespace, spec: dict) -> str:
    """The `primesvt train` line that rebuilds this checkpoint (recorded in its meta)."""
    parts = [f"primesvt train --preset {args.preset} --data {spec['name']}"]
    if spec["path"]:
        parts.append(f"--data-path {spec['path']}")
    parts.append(f"--img-size {spec['img_size']} --split-seed {spec['seed']} --epochs {args.epochs} "
                 f"--batch-size {args.batch_size} --lr {args.lr} --weight-decay {args.weight_decay} "
                 f"--label-smoothing {args.label_smoothing} --augment-shift {args.augment_shift} --seed {args.seed} --device {args.device} --output OUT")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import save_checkpoint
    from ..data import load_splits, make_spec
    from ..errors import PrimeSVTError
    from ..models import build_model, resolve_config
    from ..training import EVAL_BATCH_SIZE, evaluate, machine, torch_device, train
    from . import output_file

    preset = resolve_config({"preset": args.preset})
    if not 0 <= args.label_smoothing < 1:
        raise PrimeSVTError(f"--label-smoothing must lie in [0, 1), got {args.label_smoothing}")
    torch_device(args.device)
    output = output_file(args.output, "--output", force=args.force)
    spec = make_spec(args.data, path=args.data_path,
                     img_size=args.img_size or preset["img_size"], seed=args.split_seed)
    splits = load_splits(spec)
    config: dict = {"preset": args.preset}
    for key, value in (("img_size", spec["img_size"]), ("num_classes", splits.num_classes), ("in_channels", splits.in_channels)):
        if preset.get(key) != value:
            config[key] = value
    torch.manual_seed(args.seed)
    model = build_model(config)
    sizes = splits.sizes()
    print(f"training {args.preset} on {spec['name']} ({sizes['train']} train / {sizes['val']} val / "
          f"{sizes['test']} test images) for {args.epochs} epochs on {args.device}", file=sys.stderr)
    result = train(model, splits, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed,
                   device=args.device, progress=not args.quiet, augment_shift=args.augment_shift)
    metrics = {
        "val_accuracy": evaluate(model, splits.val, device=args.device),
        "test_accuracy": evaluate(model, splits.test, device=args.device),
        "val_images": sizes["val"], "test_images": sizes["test"], "eval_batch_size": EVAL_BATCH_SIZE,
        "train_seconds": round(result["train_seconds"], 1),
        "train_cpu_seconds": round(result["train_cpu_seconds"], 1), "epochs": args.epochs, "history": result["history"],
    }
    meta = {
        "command": reproduce_command(args, spec),
        "recipe": {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "augment_shift", "seed")},
        "device": args.device, **machine(),
    }
    save_checkpoint(output, model.cpu(), config, spec, metrics, meta=meta, force=args.force)
    print(f"val accuracy {metrics['val_accuracy']:.4f}  test accuracy {metrics['test_accuracy']:.4f}  "
          f"({metrics['train_seconds']:.0f} s wall, {metrics['train_cpu_seconds']:.0f} s CPU)  -> {output}")
    return 0
