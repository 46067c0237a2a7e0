"""`primesvt export STORAGE --study-name N --output CKPT`: write the study's selected pruned model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import PrimeSVTError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write the configuration a search selected as a pruned checkpoint (optionally fine-tuned)",
        description=(
            "Prune the study's baseline checkpoint at the selected rates (the configuration with the "
            "largest saving among the study's trials that meet both constraints), recalibrate its "
            "BatchNorm statistics when the study did, optionally fine-tune it, and write it as a "
            "checkpoint (temporary file, then rename: an existing file is never half overwritten). "
            "Reports validation and test accuracy before and after fine-tuning."
        ),
    )
    p.add_argument("storage", metavar="STORAGE", help="the search's storage, e.g. sqlite:///runs/digits.db")
    p.add_argument("--study-name", required=True)
    p.add_argument("--output", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N", help="fine-tune for N epochs (default 0)")
    p.add_argument("--finetune-lr", type=float, default=5e-4, metavar="LR",
                   help="fine-tuning learning rate (AdamW, cosine decay; default 5e-4)")
    p.add_argument("--finetune-keep", choices=("best", "last"), default="best",
                   help="keep the epoch with the best validation accuracy, the pruned model before fine-tuning "
                        "included (default), or the last epoch")
    p.add_argument("--checkpoint", help="the baseline, when it moved since the search (its hash must match)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="overwrite CKPT if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from ..checkpoint import checkpoint_sha256, load_checkpoint, resolve_checkpoint, save_checkpoint
    from ..data import check_fits, load_splits
    from ..plugin.constraints import STUDY_PREFIX
    from ..plugin.result import result
    from ..pruning import Engine, model_bytes, structure_of
    from ..pruning.recalibrate import BATCH_SIZE, recalibrate_bn
    from ..storage import describe_storage, open_storage
    from ..training import evaluate, finetune, torch_device
    from . import output_file

    torch_device(args.device)  # an unknown device or a missing GPU: one line, before any work
    if args.finetune_epochs < 0:
        raise PrimeSVTError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    if not args.finetune_lr > 0:
        raise PrimeSVTError(f"--finetune-lr must be positive, got {args.finetune_lr}")
    output = output_file(args.output, "--output", force=args.force)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage, read_only=True)
    names = optuna.get_all_study_names(storage)
    if args.study_name not in names:
        raise PrimeSVTError(
            f"no study {args.study_name!r} in {describe_storage(args.storage)}: it holds {', '.join(names) or 'no study'}"
        )
    study = optuna.load_study(study_name=args.study_name, storage=storage)
    attrs = study.user_attrs
    res = result(study)
    if res.selected is None:
        raise PrimeSVTError(f"study {args.study_name!r} has selected nothing yet: run (or resume) the search first")
    if not res.finished:
        print(f"warning: the search of {args.study_name!r} is not finished; exporting its selection so far",
              file=sys.stderr)

    source = args.checkpoint or attrs.get(f"{STUDY_PREFIX}checkpoint")
    if not source:
        raise PrimeSVTError("the study does not record its baseline checkpoint: pass --checkpoint")
    path = resolve_checkpoint(source)
    expected = attrs.get(f"{STUDY_PREFIX}checkpoint_sha256")
    if expected and checkpoint_sha256(path) != expected:
        raise PrimeSVTError(f"{path} is not the checkpoint the study searched (SHA-256 differs): pass the original with --checkpoint")
    model, ckpt = load_checkpoint(path)
    engine = Engine(model, prune_embed=bool(attrs.get(f"{STUDY_PREFIX}prune_embed", False)))
    layers = [row["layer"] for row in attrs.get(f"{STUDY_PREFIX}layers", [])]
    if layers and sorted(layers) != sorted(engine.layers):
        raise PrimeSVTError("the study's layer table does not match this checkpoint's prunable layers")
    if precisions := _selected_precisions(study, res.selected["trial"]):
        return _export_quantized(args, study, res, engine, ckpt, precisions, output)
    rates = res.selected["rates"]
    pruned = engine.prune(rates)
    if model_bytes(pruned) != res.selected["model_bytes"]:
        raise PrimeSVTError(
            f"the pruned model has {model_bytes(pruned):,} bytes, the study recorded {res.selected['model_bytes']:,}: "
            "the pruning engine changed since the search; re-run it"
        )

    spec = attrs.get(f"{STUDY_PREFIX}data") or ckpt["data"]
    splits = load_splits(spec)
    check_fits(splits, ckpt["model_config"], str(path), spec.get("img_size"))

    def accuracy(m: Any) -> dict[str, float]:
        return {split: evaluate(m, getattr(splits, split), device=args.device) for split in ("val", "test")}

    report: dict[str, Any] = {
        "study_name": args.study_name, "trial": res.selected["trial"], "rates": rates, "output": str(output),
        "base_bytes": engine.base_bytes, "model_bytes": model_bytes(pruned),
        "memory_saving": 1 - model_bytes(pruned) / engine.base_bytes, "both_constraints_met": res.both_met,
        "unpruned": accuracy(model.to(args.device)),
        "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr, "finetune_keep": args.finetune_keep,
    }
    if res.walk_commit is not None and not res.selected.get("walk_commit", True):
        report["walk_commit"] = res.walk_commit  # the selection saves more than the walk's commit
    recalibration = attrs.get(f"{STUDY_PREFIX}recalibrate_bn")
    if recalibration and rates:
        # the search evaluated every pruned configuration after adaptive BN: apply it identically
        report["pruned_plain"] = accuracy(pruned.to(args.device))
        report["recalibrate_bn"] = recalibration
        report["images_recalibrated"] = recalibrate_bn(
            pruned, splits.train, images=int(recalibration["images"]), seed=int(recalibration.get("seed", 0)),
            batch_size=int(recalibration.get("batch_size", BATCH_SIZE)), device=args.device,
        )
    report["pruned"] = accuracy(pruned.to(args.device))
    if args.finetune_epochs:
        seed = attrs.get(f"{STUDY_PREFIX}seed") or 0
        tuned = finetune(pruned, splits, epochs=args.finetune_epochs, lr=args.finetune_lr, seed=seed,
                         device=args.device, progress=not args.json, keep=args.finetune_keep)
        report["finetune_kept_epoch"] = tuned["kept_epoch"]
        report["finetuned"] = accuracy(pruned)
    final = report.get("finetuned", report["pruned"])
    metrics = {
        "val_accuracy": final["val"], "test_accuracy": final["test"],
        "val_accuracy_before_finetune": report["pruned"]["val"], "test_accuracy_before_finetune": report["pruned"]["test"],
        "unpruned_val_accuracy": report["unpruned"]["val"], "unpruned_test_accuracy": report["unpruned"]["test"],
    }
    meta = {
        "source_checkpoint_sha256": expected, "study_name": args.study_name, "trial": res.selected["trial"],
        "rates": rates, "policy": res.policy, "constraints": res.constraints, "finetune_epochs": args.finetune_epochs,
        "finetune_kept_epoch": report.get("finetune_kept_epoch"), "recalibrate_bn": report.get("recalibrate_bn"),
    }
    try:
        save_checkpoint(output, pruned.cpu(), ckpt["model_config"], spec, metrics, structure=structure_of(pruned),
                        meta=meta, force=args.force)
    except OSError as exc:
        raise PrimeSVTError(f"cannot write {output}: {exc.strerror or exc}; no existing file was changed") from None

    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0


def _selected_precisions(study: Any, number: int) -> dict[str, str]:
    """The selected trial's quantized layers, ``{layer: precision}`` (empty for a float selection)."""
    from ..precision.search import PRECISION_PREFIX

    params = study.trials[number].params
    return {p[len(PRECISION_PREFIX):]: str(v) for p, v in params.items() if p.startswith(PRECISION_PREFIX) and v != "float"}


def _export_quantized(args: argparse.Namespace, study: Any, res: Any, engine: Any, ckpt: dict[str, Any],
                      precisions: dict[str, str], output: Any) -> int:
    """A selection with precisions: the pruned model quantized exactly as the search evaluated it
    (BatchNorm recalibrated after quantizing when the study did), fine-tuned with the quantizer in
    the loop (straight-through, same precisions and bytes), written as a ``primesvt-quant/1``
    checkpoint whose size on disk is reported beside the predicted bytes."""
    from ..data import check_fits, load_splits
    from ..plugin.constraints import STUDY_PREFIX
    from ..precision import artifact_sizes, finetune_quantized, quantize, save_quantized
    from ..pruning import model_bytes
    from ..pruning.recalibrate import BATCH_SIZE, recalibrate_bn
    from ..training import evaluate

    attrs = study.user_attrs
    rates = res.selected["rates"]
    qmodel, _ = quantize(engine.prune(rates), precisions, engine=engine)
    if model_bytes(qmodel) != res.selected["model_bytes"]:
        raise PrimeSVTError(f"the quantized model has {model_bytes(qmodel):,} bytes, the study recorded "
                            f"{res.selected['model_bytes']:,}: the pruning or precision code changed since the search; re-run it")
    spec = attrs.get(f"{STUDY_PREFIX}data") or ckpt["data"]
    splits = load_splits(spec)
    check_fits(splits, ckpt["model_config"], "the study's checkpoint", spec.get("img_size"))

    def accuracy(m: Any) -> dict[str, float]:
        return {split: evaluate(m, getattr(splits, split), device=args.device) for split in ("val", "test")}

    report: dict[str, Any] = {
        "study_name": args.study_name, "trial": res.selected["trial"], "rates": rates, "precisions": precisions,
        "output": str(output), "base_bytes": engine.base_bytes, "model_bytes": model_bytes(qmodel),
        "memory_saving": 1 - model_bytes(qmodel) / engine.base_bytes, "both_constraints_met": res.both_met,
        "unpruned": accuracy(engine.model.to(args.device)),
        "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr, "finetune_keep": args.finetune_keep,
    }
    recalibration = attrs.get(f"{STUDY_PREFIX}recalibrate_bn")
    if recalibration:
        report["pruned_plain"] = accuracy(qmodel.to(args.device))
        report["recalibrate_bn"] = recalibration
        report["images_recalibrated"] = recalibrate_bn(
            qmodel, splits.train, images=int(recalibration["images"]), seed=int(recalibration.get("seed", 0)),
            batch_size=int(recalibration.get("batch_size", BATCH_SIZE)), device=args.device,
        )
    report["pruned"] = accuracy(qmodel.to(args.device))
    if args.finetune_epochs:
        tuned = finetune_quantized(qmodel, splits, scales="fixed", epochs=args.finetune_epochs, lr=args.finetune_lr,
                                   seed=attrs.get(f"{STUDY_PREFIX}seed") or 0, device=args.device,
                                   progress=not args.json, keep=args.finetune_keep)
        report["finetune_kept_epoch"] = tuned["kept_epoch"]
        report["finetuned"] = accuracy(qmodel)
    final = report.get("finetuned", report["pruned"])
    metrics = {
        "val_accuracy": final["val"], "test_accuracy": final["test"],
        "val_accuracy_before_finetune": report["pruned"]["val"], "test_accuracy_before_finetune": report["pruned"]["test"],
        "unpruned_val_accuracy": report["unpruned"]["val"], "unpruned_test_accuracy": report["unpruned"]["test"],
    }
    meta = {
        "source_checkpoint_sha256": attrs.get(f"{STUDY_PREFIX}checkpoint_sha256"), "study_name": args.study_name,
        "trial": res.selected["trial"], "rates": rates, "precisions": precisions, "policy": res.policy,
        "constraints": res.constraints, "finetune_epochs": args.finetune_epochs,
        "finetune_kept_epoch": report.get("finetune_kept_epoch"), "recalibrate_bn": report.get("recalibrate_bn"),
    }
    try:
        save_quantized(output, qmodel.cpu(), ckpt["model_config"], spec, metrics, meta=meta, force=args.force)
    except OSError as exc:
        raise PrimeSVTError(f"cannot write {output}: {exc.strerror or exc}; no existing file was changed") from None
    report.update(artifact_sizes(output))  # file_bytes on disk, payload_bytes == model_bytes
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
        print(f"  quantized {len(precisions)} layers ({', '.join(sorted(set(precisions.values())))}); file "
              f"{report['file_bytes']:,} bytes on disk for {report['payload_bytes']:,} predicted model bytes")
    return 0


def _print(r: dict[str, Any]) -> None:
    print(f"exported trial {r['trial']} of study {r['study_name']!r} to {r['output']}")
    if "walk_commit" in r:
        w = r["walk_commit"]
        print(f"  the best configuration the study evaluated, not the walk's commit (trial {w['trial']}, "
              f"saves {100 * w['memory_saving']:.2f}%)")
    if "recalibrate_bn" in r:
        print(f"  BatchNorm recalibrated on {r['images_recalibrated']} training images (as in the search)")
    print(f"  model bytes {r['model_bytes']:,} of {r['base_bytes']:,} (saves {100 * r['memory_saving']:.2f}%)"
          + ("" if r["both_constraints_met"] else "; note: the search could not meet both constraints"))
    columns = ["unpruned"] + (["pruned_plain"] if "pruned_plain" in r else []) + ["pruned"]
    columns += ["finetuned"] if "finetuned" in r else []
    heads = {"unpruned": "unpruned", "pruned_plain": "pruned, no BN recal.",
             "pruned": "pruned, BN recal." if "pruned_plain" in r else "pruned",
             "finetuned": f"fine-tuned (ep {r.get('finetune_kept_epoch')}/{r['finetune_epochs']})"}
    print("  " + f"{'accuracy':<12}" + "".join(f"{heads[c]:>20}" for c in columns))
    for split, name in (("val", "validation"), ("test", "test")):
        print("  " + f"{name:<12}" + "".join(f"{100 * r[c][split]:>19.2f}%" for c in columns))
