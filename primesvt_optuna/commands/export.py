"""`primesvt export STORAGE --study-name N --output CKPT`: write the study's selected pruned model."""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
from typing import Any

from ..errors import PrimeSVTError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export",
        help="write the configuration a search selected as a pruned checkpoint (optionally fine-tuned)",
        description=(
            "Prune the study's baseline checkpoint at the configuration it delivered (confirmed on "
            "held-back images; a study that confirmed nothing is refused unless --accept point), "
            "recalibrate its BatchNorm statistics when the study did, optionally fine-tune it (the "
            "epoch chosen on the search images only), bound its drop again on the held-back images, "
            "and write it as a checkpoint (temporary file, then rename: an existing file is never half "
            "overwritten). Reports validation and test accuracy before and after fine-tuning."
        ),
    )
    p.add_argument("storage", metavar="STORAGE", help="the search's storage, e.g. sqlite:///runs/digits.db")
    p.add_argument("--study-name", required=True)
    p.add_argument("--output", required=True, metavar="CKPT", help="checkpoint file to write")
    p.add_argument("--finetune-epochs", type=int, default=0, metavar="N", help="fine-tune for N epochs (default 0)")
    p.add_argument("--finetune-lr", type=float, default=5e-4, metavar="LR",
                   help="fine-tuning learning rate (AdamW, cosine decay; default 5e-4)")
    p.add_argument("--finetune-keep", choices=("best", "last"), default="last",
                   help="keep the last epoch (default), or the epoch with the best accuracy on the search images "
                        "(validation for a study without held-back images), the pruned model before fine-tuning "
                        "included; never the held-back or test images")
    p.add_argument("--accept", choices=("confirmed", "point"), default="confirmed",
                   help="'confirmed' (default): export only a selection the study confirmed on held-back images; "
                        "'point': the search's own selection by the point rule, unconfirmed")
    p.add_argument("--checkpoint", help="the baseline, when it moved since the search (its hash must match)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--force", action="store_true", help="overwrite CKPT if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from ..checkpoint import checkpoint_sha256, load_checkpoint, resolve_checkpoint, save_checkpoint
    from ..data import check_fits, load_splits
    from ..plugin.constraints import STUDY_PREFIX, Constraints
    from ..plugin.result import result
    from ..pruning import Engine, model_bytes, structure_of
    from ..storage import describe_storage, open_storage
    from ..training import evaluate, torch_device
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
    selected = delivery(res, args.study_name, args.accept)
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
    rates = selected["rates"]
    precisions = _selected_precisions(study, selected["trial"])
    pruned = engine.prune(rates)
    if precisions:  # the pruned model quantized exactly as the search evaluated it
        from ..precision import quantize

        pruned, _ = quantize(pruned, precisions, engine=engine)
    if model_bytes(pruned) != selected["model_bytes"]:
        raise PrimeSVTError(
            f"the {'quantized' if precisions else 'pruned'} model has {model_bytes(pruned):,} bytes, the study recorded "
            f"{selected['model_bytes']:,}: the pruning or precision code changed since the search; re-run it"
        )

    spec = attrs.get(f"{STUDY_PREFIX}data") or ckpt["data"]
    splits = load_splits(spec)
    check_fits(splits, ckpt["model_config"], str(path), spec.get("img_size"))
    parts = held_back(attrs, splits)  # (search part, confirmation part, split record) or None

    def accuracy(m: Any) -> dict[str, float]:
        return {split: evaluate(m, getattr(splits, split), device=args.device) for split in ("val", "test")}

    report: dict[str, Any] = {
        "study_name": args.study_name, "trial": selected["trial"], "rates": rates,
        **({"precisions": precisions} if precisions else {}), "output": str(output),
        "accept": args.accept, "base_bytes": engine.base_bytes, "model_bytes": model_bytes(pruned),
        "memory_saving": 1 - model_bytes(pruned) / engine.base_bytes, "both_constraints_met": res.both_met,
        "unpruned": accuracy(model.to(args.device)),
        "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr, "finetune_keep": args.finetune_keep,
    }
    if res.walk_commit is not None and not selected.get("walk_commit", True):
        report["walk_commit"] = res.walk_commit  # the selection saves more than the walk's commit
    recalibration = attrs.get(f"{STUDY_PREFIX}recalibrate_bn")
    if recalibration and (rates or precisions):
        # the search evaluated every pruned (quantized) configuration after adaptive BN: apply it identically
        _recalibrate_as_searched(pruned, model, recalibration, splits, report, accuracy, args.device)
    report["pruned"] = accuracy(pruned.to(args.device))
    check = None
    if parts is not None:
        check = HeldBackCheck(model, parts, Constraints.from_dict(attrs[f"{STUDY_PREFIX}constraints"]), args.device)
        report["confirmation"] = check.record(parts[2], spec, selected.get("confirmation"))
        report["confirmation"]["pruned"] = check.judge(pruned)
    if args.finetune_epochs:
        tuned = finetune_checked(pruned, splits, args, int(attrs.get(f"{STUDY_PREFIX}seed") or 0), parts, check,
                                 quantized=bool(precisions))
        report.update(finetune_kept_epoch=tuned["kept_epoch"], finetuned=accuracy(pruned))
        if check is not None:
            report["confirmation"]["finetuned"] = tuned["bound"]
            report["finetune_discarded"] = tuned["discarded"]
    if check is not None:
        written = "finetuned" if args.finetune_epochs and not report.get("finetune_discarded") else "pruned"
        report["confirmation"].update(written=written, confirmed=args.accept == "confirmed"
                                      and report["confirmation"][written]["passed"])
    final = report["pruned"] if report.get("finetune_discarded") else report.get("finetuned", report["pruned"])
    metrics = {
        "val_accuracy": final["val"], "test_accuracy": final["test"],
        "val_accuracy_before_finetune": report["pruned"]["val"], "test_accuracy_before_finetune": report["pruned"]["test"],
        "unpruned_val_accuracy": report["unpruned"]["val"], "unpruned_test_accuracy": report["unpruned"]["test"],
    }
    meta = {
        "source_checkpoint": str(path.resolve()), "source_checkpoint_sha256": expected or checkpoint_sha256(path),
        "study_name": args.study_name, "trial": selected["trial"], "rates": rates,
        **({"precisions": precisions} if precisions else {}),
        "policy": res.policy, "constraints": res.constraints, "accept": args.accept,
        "finetune_epochs": args.finetune_epochs, "finetune_kept_epoch": report.get("finetune_kept_epoch"),
        "finetune_discarded": report.get("finetune_discarded", False), "recalibrate_bn": report.get("recalibrate_bn"),
        "confirmation": report.get("confirmation"),
    }
    try:
        if precisions:
            from ..precision import save_quantized

            save_quantized(output, pruned.cpu(), ckpt["model_config"], spec, metrics, meta=meta, force=args.force)
        else:
            save_checkpoint(output, pruned.cpu(), ckpt["model_config"], spec, metrics, structure=structure_of(pruned),
                            meta=meta, force=args.force)
    except OSError as exc:
        raise PrimeSVTError(f"cannot write {output}: {exc.strerror or exc}; no existing file was changed") from None
    if precisions:
        from ..precision import artifact_sizes

        report.update(artifact_sizes(output))  # file_bytes on disk, payload_bytes == model_bytes

    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
        if precisions:
            print(f"  quantized {len(precisions)} layers ({', '.join(sorted(set(precisions.values())))}); file "
                  f"{report['file_bytes']:,} bytes on disk for {report['payload_bytes']:,} predicted model bytes")
    return 0


def _selected_precisions(study: Any, number: int) -> dict[str, str]:
    """The selected trial's quantized layers, ``{layer: precision}`` (empty for a float selection)."""
    from ..precision.search import quantized_layers

    return quantized_layers(study.trials[number].params)


def _recalibrate_as_searched(model: Any, unpruned: Any, recalibration: dict[str, Any], splits: Any,
                             report: dict[str, Any], accuracy: Any, device: str) -> None:
    """Adaptive BatchNorm on ``model`` in place, with the settings the study recorded, so the written
    model is the one the search evaluated; the report gets the accuracy before it and its images."""
    from ..pruning.recalibrate import BATCH_SIZE, RelativeReference, recalibrate_bn
    from ..pruning.structure import structure_of

    report["pruned_plain"] = accuracy(model.to(device))
    report["recalibrate_bn"] = recalibration
    settings = {"images": int(recalibration["images"]), "seed": int(recalibration.get("seed", 0)),
                "batch_size": int(recalibration.get("batch_size", BATCH_SIZE)), "device": device}
    relative, spent = None, 0
    if recalibration.get("rule") == "relative":  # a record without a rule: the absolute rule, as it searched
        reference = RelativeReference(unpruned, splits.train, **settings)
        relative, spent = reference.statistics(structure_of(model)), reference.images
    report["images_recalibrated"] = spent + recalibrate_bn(model, splits.train, relative_to=relative, **settings)


def delivery(res: Any, name: str, accept: str) -> dict[str, Any]:
    """What to export: the study's confirmed delivery; with ``accept="point"`` the search's own
    selection, unconfirmed. Refused (one line, before any work) when there is none."""
    if accept == "point":
        chosen = res.search_selected if res.search_selected is not None else res.selected
        if chosen is None:
            raise PrimeSVTError(f"study {name!r} has selected nothing yet: run (or resume) the search first")
        return chosen
    if res.selected is None:
        raise PrimeSVTError(f"study {name!r} has selected nothing yet: run (or resume) the search first")
    rule = (res.constraints or {}).get("accept", "point")
    if "confirmation" not in res.selected:
        raise PrimeSVTError(f"study {name!r} was searched with accept = {rule!r}, so nothing it selected is confirmed "
                            "on held-back images: pass --accept point to export its selection unconfirmed")
    if not res.both_met:
        raise PrimeSVTError(f"study {name!r} delivered no confirmed selection ({res.message.rstrip('.')}): "
                            "pass --accept point to export the search's own selection unconfirmed")
    return res.selected


def held_back(attrs: dict[str, Any], splits: Any) -> tuple[Any, Any, dict[str, Any]] | None:
    """The study's search part and confirmation part of ``splits.val`` as its objective drew them
    (the recorded ``primesvt:split``), with that record; None for a study that held nothing back."""
    from ..plugin.constraints import STUDY_PREFIX
    from ..plugin.objective import evaluation_parts

    split = attrs.get(f"{STUDY_PREFIX}split")
    if split is None and (attrs.get(f"{STUDY_PREFIX}constraints") or {}).get("accept") == "confirmed":
        raise PrimeSVTError("the study does not record how its evaluation images were split (primesvt:split): "
                            "resume it once with `primesvt search ... --resume`, which records it")
    if not split or not split.get("holdout"):
        return None
    search, confirm = evaluation_parts(splits.val, split["eval_images"], split["holdout"], split["seed"])
    if (len(search), len(confirm)) != (split["search_images"], split["confirm_images"]):
        raise PrimeSVTError(f"the validation split gives {len(search)} search and {len(confirm)} held-back images, the "
                            f"study recorded {split['search_images']} and {split['confirm_images']}: the data changed "
                            "since the search")
    return search, confirm, split


class HeldBackCheck:
    """The paired bound of a pruned model's drop against the unpruned one on the held-back images,
    as the confirmation ladder computes it (``acceptance.confirm.judge``)."""

    def __init__(self, unpruned: Any, parts: tuple[Any, Any, dict[str, Any]], constraints: Any, device: str) -> None:
        self.confirm, self.constraints, self.device = parts[1], constraints, device
        self.reference = self._correct(unpruned)

    def _correct(self, model: Any) -> list[bool]:
        import torch

        from ..training import iter_correct

        return torch.cat(list(iter_correct(model.to(self.device), self.confirm, device=self.device))).tolist()

    def judge(self, model: Any) -> dict[str, Any]:
        from ..acceptance.confirm import judge

        v = judge(self.reference, self._correct(model), self.constraints, self.constraints.confidence)
        return {"passed": v.passed, "bound": v.bound, "accuracy": v.accuracy, "discordant": list(v.discordant)}

    def record(self, split: dict[str, Any], spec: dict[str, Any], ladder: dict[str, Any] | None) -> dict[str, Any]:
        """What the checkpoint and the report say of the check: level, kind of bound, images, the
        split that made them (holdout, seed, evaluation subset, the data's re-split) and the rung the
        study confirmed (None under --accept point)."""
        c = self.constraints
        return {"confidence": c.confidence, "max_accuracy_drop": c.max_accuracy_drop, "min_accuracy": c.min_accuracy,
                "bound_kind": "accuracy lower bound" if c.min_accuracy is not None else "drop upper bound",
                "images": len(self.reference), "base_accuracy": sum(self.reference) / len(self.reference),
                "search_images": split["search_images"], "holdout": split["holdout"], "split_seed": split["seed"],
                "eval_images": split["eval_images"], "resplit": spec.get("resplit"),
                "ladder": None if ladder is None else {k: ladder.get(k) for k in ("trial", "rung", "bound")}}


def finetune_checked(pruned: Any, splits: Any, args: argparse.Namespace, seed: int,
                     parts: tuple[Any, Any, dict[str, Any]] | None, check: HeldBackCheck | None,
                     quantized: bool = False) -> dict[str, Any]:
    """Fine-tune ``pruned`` in place, choosing the epoch without the held-back images (on the
    search part, or the last), then bound it on them: under confirmed acceptance, weights that
    fail their bound are put back to the confirmed ones before fine-tuning (``discarded``). A
    quantized model is fine-tuned with its quantizer in the loop (straight-through, the searched
    precisions and scales kept), never as a float model."""
    from ..precision import finetune_quantized
    from ..pruning.memory import QUANT_ATTR
    from ..training import finetune

    state, quant = copy.deepcopy(pruned.state_dict()), getattr(pruned, QUANT_ATTR, None)
    tune = functools.partial(finetune_quantized, scales="fixed") if quantized else finetune
    tuned = tune(pruned, splits, epochs=args.finetune_epochs, lr=args.finetune_lr, seed=seed, device=args.device,
                 progress=not args.json, keep=args.finetune_keep, select_on=None if parts is None else parts[0])
    bound = None if check is None else check.judge(pruned)
    discarded = bound is not None and args.accept == "confirmed" and not bound["passed"]
    if discarded:  # the written weights keep the promise: the confirmed ones (and their integers)
        pruned.load_state_dict(state)
        if quantized:
            setattr(pruned, QUANT_ATTR, quant)
    return {"kept_epoch": tuned["kept_epoch"], "bound": bound, "discarded": discarded}


def _print(r: dict[str, Any]) -> None:
    print(f"exported trial {r['trial']} of study {r['study_name']!r} to {r['output']}")
    if "walk_commit" in r:
        w = r["walk_commit"]
        print(f"  the best configuration the study evaluated, not the walk's commit (trial {w['trial']}, "
              f"saves {100 * w['memory_saving']:.2f}%)")
    if "recalibrate_bn" in r:
        settings = r["recalibrate_bn"]
        rule = settings.get("rule", "absolute")
        print(f"  BatchNorm recalibrated on {settings['images']} training images, {rule} rule (as in the search; "
              f"{r['images_recalibrated']:,} images passed forward)")
    print(f"  model bytes {r['model_bytes']:,} of {r['base_bytes']:,} (saves {100 * r['memory_saving']:.2f}%)"
          + ("" if r["both_constraints_met"] or r.get("accept") == "point" else
             "; note: the search could not meet both constraints"))
    if r.get("accept") == "point":
        print("  not confirmed (--accept point): the search's own selection; its accuracy was measured only on the "
              "images that chose it")
    columns = ["unpruned"] + (["pruned_plain"] if "pruned_plain" in r else []) + ["pruned"]
    columns += ["finetuned"] if "finetuned" in r else []
    heads = {"unpruned": "unpruned", "pruned_plain": "pruned, no BN recal.",
             "pruned": "pruned, BN recal." if "pruned_plain" in r else "pruned",
             "finetuned": f"fine-tuned (ep {r.get('finetune_kept_epoch')}/{r['finetune_epochs']})"}
    width = 2 + max(len(heads[c]) for c in columns)  # a header never runs into its neighbour
    print("  " + f"{'accuracy':<12}" + "".join(f"{heads[c]:>{width}}" for c in columns))
    for split, name in (("val", "validation"), ("test", "test")):
        print("  " + f"{name:<12}" + "".join(f"{100 * r[c][split]:>{width - 1}.2f}%" for c in columns))
    if "confirmation" in r:
        for line in _held_back_lines(r):
            print("  " + line)


def _held_back_lines(r: dict[str, Any]) -> list[str]:
    """The held-back check in words: each model's bound, and which weights were written."""
    c = r["confirmation"]
    level = f"{100 * c['confidence']:g}%"

    def bound(v: dict[str, Any]) -> str:
        if c["min_accuracy"] is not None:
            what, limit = f"accuracy at least {100 * v['bound']:.2f}%", f"floor {100 * c['min_accuracy']:.2f}%"
        else:
            what, limit = f"drop at most {100 * v['bound']:.2f} points", f"budget {100 * c['max_accuracy_drop']:.2f}"
        return f"{what} at {level} ({limit}: {'holds' if v['passed'] else 'NOT met'})"

    lines = [f"held-back check on {c['images']} images no selection or fine-tuning saw (unpruned "
             f"{100 * c['base_accuracy']:.2f}%): pruned {100 * c['pruned']['accuracy']:.2f}%, {bound(c['pruned'])}"]
    if "finetuned" in c:
        lines.append(f"fine-tuned {100 * c['finetuned']['accuracy']:.2f}%, {bound(c['finetuned'])}")
    if r.get("finetune_discarded"):
        lines.append("the fine-tuned weights fail their bound: written instead are the confirmed pruned weights, "
                     "without fine-tuning")
    elif r.get("accept") == "point" and not c[c["written"]]["passed"]:
        lines.append("the written weights do not keep the accuracy budget on the held-back images")
    return lines
