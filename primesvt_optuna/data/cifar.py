"""CIFAR-10/100 from the standard python-pickle folders (no download, no torchvision).

Expected layouts: ``cifar-10-batches-py/`` with ``data_batch_1`` ... ``data_batch_5`` and
``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``. The whole training set trains;
the official test set is split in two seeded stratified halves: validation (drives the search)
and test (only reported). Holding validation out of the training set would not work for the
usual case, a checkpoint trained elsewhere on all 50,000 training images.
"""

from __future__ import annotations

import pickle
from pathlib import Path

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


def _read(path: Path, files: list[str], label_key: bytes, layout: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for name in files:
        f = path / name
        if not f.is_file():
            raise PrimeSVTError(f"CIFAR folder {path} has no {name}: expected {layout}")
        try:
            with open(f, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(batch[label_key], dtype=np.int64)
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
