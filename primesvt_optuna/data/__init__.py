"""Data sets as plain ``(image float[C,H,W], label int)`` torch datasets with fixed seeded splits.

A data spec is a plain dict saved in every checkpoint, so a checkpoint alone finds its data again:
``{"name": "digits"|"digits-hard"|"cifar10"|"cifar100"|"imagefolder", "path": str|None,
"img_size": int, "seed": int}``. ``seed`` fixes the split, not the training run: models trained
with different seeds are evaluated on the same images. An optional ``"resplit": int`` pools the
validation and test images and draws them again with that seed (same sizes, stratified, grouped by
source image; ``primesvt_optuna.acceptance.split.resplit``): the benchmarks' seeds re-draw what a
user's next data would change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ..errors import PrimeSVTError

NAMES = ("digits", "digits-hard", "cifar10", "cifar100", "imagefolder")
EMBEDDED = ("digits", "digits-hard")


@dataclass(frozen=True)
class Splits:
    """Train (fitting), validation (drives the search) and test (only reported) sets."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def make_spec(name: str, *, path: str | None = None, img_size: int, seed: int = 0,
              resplit: int | None = None) -> dict[str, Any]:
    """A validated data spec; embedded sets take no path, the others need one."""
    if name not in NAMES:
        raise PrimeSVTError(f"unknown data set {name!r}: choose one of {', '.join(NAMES)}")
    if name in EMBEDDED and path is not None:
        raise PrimeSVTError(f"data set {name!r} is embedded and takes no path (got {path!r})")
    if name not in EMBEDDED and not path:
        raise PrimeSVTError(f"data set {name!r} needs a path (--data-path)")
    if int(img_size) < 8:
        raise PrimeSVTError(f"img_size must be at least 8, got {img_size}")
    if not 0 <= int(seed) < 2**32:
        raise PrimeSVTError(f"the data split seed must be in 0..2**32-1, got {seed}")
    spec = {"name": name, "path": None if path is None else str(path), "img_size": int(img_size), "seed": int(seed)}
    if resplit is not None:
        if isinstance(resplit, bool) or not isinstance(resplit, int) or not 0 <= resplit < 2**32:
            raise PrimeSVTError(f"resplit is a seed in 0..2**32-1, got {resplit!r}")
        spec["resplit"] = resplit
    return spec


def check_fits(splits: Splits, model_config: dict[str, Any], source: str, img_size: int | None = None) -> None:
    """Refuse data whose classes, input channels or image size differ from the model's: labels
    would be read against the wrong classifier rows, or the convolutions would see images at a
    scale they were not trained on, and the accuracy would silently mean nothing. ``img_size``:
    the data spec's (every loader resizes to it), so no image is read here."""
    from ..models import resolve_config

    config = resolve_config(dict(model_config))
    for key, found, what, fix in (
            ("num_classes", splits.num_classes, "classes", "give the data set it was trained on"),
            ("in_channels", splits.in_channels, "input channels", "give the data set it was trained on"),
            ("img_size", img_size, "pixels a side", f"set the data's img_size to {config.get('img_size')}")):
        if found is not None and config.get(key) is not None and config[key] != found:
            raise PrimeSVTError(f"the data has {found} {what} but {source} was built for {config[key]}: {fix}")


def load_splits(spec: dict[str, Any]) -> Splits:
    """The train/val/test splits that ``spec`` describes (the same images for the same spec)."""
    spec = make_spec(spec["name"], path=spec.get("path"), img_size=spec["img_size"], seed=spec.get("seed", 0),
                     resplit=spec.get("resplit"))
    splits = _load(spec)
    if spec.get("resplit") is None:
        return splits
    from ..acceptance.split import resplit

    val, test = resplit(splits.val, splits.test, spec["resplit"])
    return Splits(splits.train, val, test, splits.num_classes, splits.in_channels)


def _load(spec: dict[str, Any]) -> Splits:
    name, path, size, seed = spec["name"], spec["path"], spec["img_size"], spec["seed"]
    if name == "digits":
        from .digits import load_digits_splits

        return load_digits_splits(size, seed)
    if name == "digits-hard":
        from .digits import load_digits_hard_splits

        return load_digits_hard_splits(size, seed)
    if name in ("cifar10", "cifar100"):
        from .cifar import load_cifar_splits

        return load_cifar_splits(path, 10 if name == "cifar10" else 100, size, seed)
    from .folder import load_folder_splits

    return load_folder_splits(path, size, seed)


def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A fixed seeded subset of ``n`` items (the whole set when ``n`` is None or not smaller)."""
    if n is None or n >= len(dataset):
        return dataset
    if n <= 0:
        raise PrimeSVTError(f"subset size must be positive, got {n}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(dataset), generator=g)[:n].sort().values
    return Subset(dataset, idx.tolist())


__all__ = ["EMBEDDED", "NAMES", "Splits", "load_splits", "make_spec", "subset"]
