"""ImageNet-style class-per-folder trees, read with PIL (no torchvision).

Expected layout: ``ROOT/train/<class>/<image>`` and ``ROOT/val/<class>/<image>`` (class folder
names sorted give the label order; every ``val`` class must exist in ``train``). With a
``ROOT/test/<class>/`` folder as well, the three folders are the three splits. Without one, as for
ImageNet, ``val/`` is split in two seeded stratified halves: validation (drives the search) and
test (only reported), because a pre-trained checkpoint has seen all of ``train/``.
Images are resized (shorter side to ``img_size / 0.875``), centre-cropped to ``img_size`` and
normalised with the ImageNet mean and standard deviation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..errors import PrimeSVTError
from . import Splits
from ._common import holdout_split

LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (optionally ROOT/test/<class>/<image>)"
EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm"}
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


class ImageFiles(Dataset):
    """Image files loaded lazily: the whole set never sits in memory."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int) -> None:
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                w, h = im.size
                short = round(self.size / 0.875)
                scale = short / min(w, h)
                im = im.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))), Image.BILINEAR)
                w, h = im.size
                left, top = (w - self.size) // 2, (h - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        except OSError as exc:
            raise PrimeSVTError(f"cannot read image {self.files[i]}: {exc}") from None
        return (x - MEAN) / STD, int(self.labels[i])


def _scan(folder: Path, classes: list[str] | None) -> tuple[list[str], list[Path], np.ndarray]:
    if not folder.is_dir():
        raise PrimeSVTError(f"image folder {folder} does not exist: expected {LAYOUT}")
    found = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))  # .ipynb_checkpoints
    if not found:
        raise PrimeSVTError(f"image folder {folder} has no class subfolders: expected {LAYOUT}")
    defining = classes is None  # train/: its folders are the classes
    if defining:
        classes = found
    elif unknown := sorted(set(found) - set(classes)):
        raise PrimeSVTError(f"{folder} has classes not in train/: {', '.join(unknown[:5])}: expected {LAYOUT}")
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in found:
        images = [f for f in sorted((folder / c).iterdir()) if f.suffix.lower() in EXTENSIONS]
        if not images and defining:  # it would still be a class, shifting every label after it
            raise PrimeSVTError(f"class folder {folder / c} has no images: remove it or add its images; expected {LAYOUT}")
        files += images
        labels += [index[c]] * len(images)
    if not files:
        raise PrimeSVTError(f"image folder {folder} has no images ({', '.join(sorted(EXTENSIONS))}): expected {LAYOUT}")
    return classes, files, np.asarray(labels, dtype=np.int64)


def load_folder_splits(path: str, img_size: int, seed: int) -> Splits:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise PrimeSVTError(f"image folder {root} does not exist: expected {LAYOUT}")
    classes, files, labels = _scan(root / "train", None)
    train = ImageFiles(files, labels, img_size)
    _, vfiles, vlabels = _scan(root / "val", classes)
    val = ImageFiles(vfiles, vlabels, img_size)
    if (root / "test").exists():
        _, tfiles, tlabels = _scan(root / "test", classes)
        test: Dataset = ImageFiles(tfiles, tlabels, img_size)
    else:
        if len(vfiles) < 2:
            raise PrimeSVTError(f"{root / 'val'} needs at least 2 images to split into validation and test")
        test_idx, val_idx = holdout_split(vlabels, 0.5, seed)
        val, test = Subset(val, val_idx.tolist()), Subset(val, test_idx.tolist())
    return Splits(train, val, test, num_classes=len(classes), in_channels=3)
