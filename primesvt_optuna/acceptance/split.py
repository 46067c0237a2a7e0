"""Which images play which part: the search part that drives a study, the confirmation part held
back from it, and (for benchmarks) a re-drawn validation/test split per seed.

Both splits are stratified by class and grouped by *source image*: images derived from one
original (digits-hard makes two distorted copies of each scan) always land in the same part, so a
part never holds a near-copy of an image of another part.
"""

from __future__ import annotations

import numpy as np

from torch.utils.data import ConcatDataset, Dataset, Subset

from ..errors import PrimeSVTError


def labels_and_groups(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Class labels and source groups of a dataset: read from an in-memory ``TensorImages`` (and a
    ``Subset`` or ``ConcatDataset`` of them), else by reading every item (each item its own group)."""
    if isinstance(dataset, Subset):
        labels, groups = labels_and_groups(dataset.dataset)
        idx = np.asarray(dataset.indices)
        return labels[idx], groups[idx]
    if isinstance(dataset, ConcatDataset):
        parts = [labels_and_groups(d) for d in dataset.datasets]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if hasattr(dataset, "labels") and hasattr(dataset, "sources"):
        return np.asarray(dataset.labels), np.asarray(dataset.sources)
    labels = np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
    return labels, np.arange(len(labels))


def grouped_split(labels: np.ndarray, groups: np.ndarray, second: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(first, second)``, about ``second`` items in the second part: whole groups, each
    class's groups shared out in proportion, in a seeded order."""
    n = len(labels)
    if not 0 < second < n:
        raise PrimeSVTError(f"cannot hold back {second} of {n} images: leave at least one in each part")
    unique, first_of = np.unique(groups, return_index=True)
    group_label = labels[first_of]
    rng = np.random.RandomState(seed)
    chosen: list[np.ndarray] = []
    share = second / n
    for label in np.unique(group_label):
        members = unique[group_label == label]
        rng.shuffle(members)
        chosen.append(members[: int(round(share * len(members)))])
    held = np.isin(groups, np.concatenate(chosen) if chosen else np.array([], dtype=groups.dtype))
    idx = np.arange(n)
    return idx[~held], idx[held]


def search_confirm(dataset: Dataset, holdout: float, seed: int) -> tuple[Dataset, Dataset | None]:
    """The search part and the confirmation part (``holdout`` of the images; None for 0)."""
    if holdout == 0:
        return dataset, None
    labels, groups = labels_and_groups(dataset)
    search, confirm = grouped_split(labels, groups, round(holdout * len(labels)), seed)
    return Subset(dataset, search.tolist()), Subset(dataset, confirm.tolist())


def resplit(val: Dataset, test: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    """Validation and test pooled and drawn again by ``seed``, each keeping its size (within a
    group): what a user's next data would change, for benchmarks whose seeds must replicate."""
    pooled = ConcatDataset([val, test])
    labels, groups = labels_and_groups(pooled)
    new_val, new_test = grouped_split(labels, groups, len(test), seed)
    return Subset(pooled, new_val.tolist()), Subset(pooled, new_test.tolist())


