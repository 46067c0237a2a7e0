"""The embedded data sets, built from scikit-learn's digits (1,797 real 8x8 scans, no download).

* ``digits``: the images upsampled to ``img_size`` (bilinear), split 60/20/20 stratified.
* ``digits-hard``: a harder benchmark derived by seeded code, so that pruning policies separate:
  split 50/30/20 by *source image* (no source digit in two splits), then each source gives
  ``HARD_COPIES`` variants under a random affine transform (rotation, scale, shear, shift),
  random contrast and Gaussian noise. The larger validation split (about 1,080 images, one image
  = 0.09 points) narrows the confidence intervals of policy comparisons.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from . import Splits
from ._common import TensorImages, stratified_split

DIGITS_FRACTIONS = (0.6, 0.2)
HARD_FRACTIONS = (0.5, 0.3)
HARD_COPIES = 2


@lru_cache(maxsize=1)
def _raw() -> tuple[torch.Tensor, np.ndarray]:
    """Images in [0, 1] as ``[1797, 1, 8, 8]`` and their labels."""
    d = load_digits()
    images = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    return images, d.target.astype(np.int64)


def _upsample(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def load_digits_splits(img_size: int, seed: int) -> Splits:
    images, labels = _raw()
    images = _upsample(images, img_size)
    parts = stratified_split(labels, DIGITS_FRACTIONS, seed)
    train, val, test = (TensorImages(images[p], torch.from_numpy(labels[p]), p) for p in parts)
    return Splits(train, val, test, num_classes=10, in_channels=1)


def distort(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random affine transform, contrast and noise for each image of ``[N, 1, H, W]``."""
    n = images.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    angle = uniform(-25.0, 25.0) * math.pi / 180.0
    scale = uniform(0.8, 1.15)  # >1 in the sampling grid shrinks the digit
    shear = uniform(-0.3, 0.3)
    tx, ty = uniform(-0.15, 0.15), uniform(-0.15, 0.15)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin + shear * cos, tx], 1), torch.stack([sin, cos + shear * sin, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out * uniform(0.5, 1.0).view(n, 1, 1, 1)
    out = out + 0.25 * torch.randn(out.shape, generator=g)
    return out.clamp_(0.0, 1.0)


def load_digits_hard_splits(img_size: int, seed: int) -> Splits:
    images, labels = _raw()
    images = _upsample(images, img_size)
    g = torch.Generator().manual_seed(10_007 + seed)
    sets = []
    for part in stratified_split(labels, HARD_FRACTIONS, seed):
        src = images[part].repeat(HARD_COPIES, 1, 1, 1)
        sets.append(TensorImages(distort(src, g), torch.from_numpy(labels[part]).repeat(HARD_COPIES),
                                 np.tile(part, HARD_COPIES)))
    return Splits(*sets, num_classes=10, in_channels=1)
