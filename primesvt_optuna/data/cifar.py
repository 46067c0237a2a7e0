"""CIFAR-10/100 from the standard python-pickle folders (no download, no torchvision).

Expected layouts: ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` and
``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``. The whole training set trains;
the official test set is split in two seeded stratified halves: validation (drives the search)
and test (only reported). Holding validation out of the training set would not work for the
usual case, a checkpoint trained elsewhere on all 50,000 training images.

The batches are pickles, and unpickling may call any importable function, so a file a user points
at could run code. ``read_batch`` unpickles with only the globals a CIFAR batch holds (numpy's
array and scalar reconstruction and dtype, and ``_codecs.encode``, with which Python 3 writes bytes at
protocols 0-2); anything else is refused with one line before it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import PrimeSVTError
from . import Splits
from ._common import holdout_split

LAYOUTS = {
    10: ("cifar-10-batches-py/ with data_batch_1 ... data_batch_5 and test_batch",
         [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    100: ("cifar-100-python/ with train and test", ["train"], ["test"], b"fine_labels"),
}
MEAN = {10: (0.4914, 0.4822, 0.4465), 100: (0.5071, 0.4865, 0.4409)}
STD = {10: (0.2470, 0.2435, 0.2616), 100: (0.2673, 0.2564, 0.2762)}
VAL_FRACTION = 0.5


class UInt8Images(Dataset):
    """``[N, 3, 32, 32]`` uint8 images, normalised (and resized) one at a time to save memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std, size: int) -> None:
        self.images, self.labels, self.size = images, labels.long(), size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float().div_(255.0)
        if x.shape[-1] != self.size:
            x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
        return (x - self.mean) / self.std, int(self.labels[i])


# What a CIFAR batch pickle may name: numpy arrays (numpy 1's and 2's module names, protocols 0-5)
# and the bytes encoder of protocol 0-2 pickles written by Python 3.
SAFE_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),  # numpy integers as labels
    ("_codecs", "encode"),
}


class _Refused(Exception):
    """A pickle names a global a CIFAR batch never holds."""


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_GLOBALS:
            raise _Refused(f"{module}.{name}")
        if module.startswith("numpy.core."):  # numpy 1's name; numpy 2 warns on it
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_batch(f: Path, layout: str) -> Any:
    """Unpickle one CIFAR batch file with only the globals that format holds (never runs code)."""
    try:
        return _BatchUnpickler(io.BytesIO(f.read_bytes()), encoding="bytes").load()
    except _Refused as refused:
        raise PrimeSVTError(f"{f} names {refused}, which a CIFAR batch never holds: refusing to unpickle it "
                            f"(a pickle can run code); expected {layout}") from None


def _read(path: Path, files: list[str], label_key: bytes, layout: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for name in files:
        f = path / name
        if not f.is_file():
            raise PrimeSVTError(f"CIFAR folder {path} has no {name}: expected {layout}")
        try:
            batch = read_batch(f, layout)
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[label_key], dtype=np.int64)
        except PrimeSVTError:
            raise
        except Exception as exc:  # any unpickling/shape problem means the file is not a CIFAR batch
            raise PrimeSVTError(f"{f} is not a readable CIFAR batch ({type(exc).__name__}): expected {layout}") from None
        if len(x) != len(y):
            raise PrimeSVTError(f"{f} has {len(x)} images but {len(y)} labels: expected {layout}")
        data.append(x)
        labels.append(y)
    return np.concatenate(data), np.concatenate(labels)


def load_cifar_splits(path: str, classes: int, img_size: int, seed: int) -> Splits:
    layout, train_files, test_files, key = LAYOUTS[classes]
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PrimeSVTError(f"CIFAR-{classes} folder {root} does not exist: expected {layout}")
    x, y = _read(root, train_files, key, layout)
    xt, yt = _read(root, test_files, key, layout)
    if len(y) == 0 or len(yt) < 2:
        raise PrimeSVTError(f"{root} has {len(y)} training and {len(yt)} test images: the test batch is split "
                            f"into validation and test, so it needs at least 2; expected {layout}")
    if min(y.min(), yt.min()) < 0 or max(y.max(), yt.max()) >= classes:
        raise PrimeSVTError(f"{root} has labels outside 0..{classes - 1}: is it CIFAR-{classes}? expected {layout}")
    test, val = holdout_split(yt, VAL_FRACTION, seed)

    def make(images: np.ndarray, labels: np.ndarray) -> UInt8Images:
        return UInt8Images(torch.from_numpy(images), torch.from_numpy(labels), MEAN[classes], STD[classes], img_size)

    return Splits(make(x, y), make(xt[val], yt[val]), make(xt[test], yt[test]), num_classes=classes, in_channels=3)
