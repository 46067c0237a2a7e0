"""Small shared pieces of the readers: an in-memory dataset and a stratified seeded split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """Images held in memory as one float tensor ``[N, C, H, W]`` with integer labels; ``sources``
    are the indices of the original images they came from (to check that splits are disjoint)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, sources: np.ndarray | None = None) -> None:
        self.images = images.contiguous()
        self.labels = labels.long()
        self.sources = np.arange(len(labels)) if sources is None else np.asarray(sources)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices ``(first, second, rest)`` with the given fractions of each class, fixed by ``seed``."""
    idx = np.arange(len(labels))
    first, other = train_test_split(idx, train_size=fractions[0], stratify=labels, random_state=seed)
    second_share = fractions[1] / (1.0 - fractions[0])
    second, rest = train_test_split(other, train_size=second_share, stratify=labels[other], random_state=seed)
    return np.sort(first), np.sort(second), np.sort(rest)


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)`` with ``fraction`` held out (at least one), stratified when the
    class counts allow it (tiny folders fall back to a plain seeded split)."""
    idx = np.arange(len(labels))
    n_held = max(1, round(fraction * len(labels)))
    _, counts = np.unique(labels, return_counts=True)
    stratify = labels if counts.min() >= 2 and n_held >= len(counts) else None
    kept, held = train_test_split(idx, test_size=n_held, stratify=stratify, random_state=seed)
    return np.sort(kept), np.sort(held)
