"""Adaptive BatchNorm recalibration (EagleEye, Li et al., ECCV 2020) for pruned spiking models.

After filters are removed, the BatchNorm layers downstream of them see inputs whose statistics
differ from the ones they were trained on. Re-estimating the running statistics on a few hundred
training images (forward passes only, no gradients) recovers much of the lost accuracy without
any training. On Spikformer the neurons keep a membrane state across calls, so it is reset after
every batch (``spikingjelly.activation_based.functional.reset_net``), as in evaluation.

What :func:`recalibrate_bn` does, exactly:

1. every BatchNorm module (``torch.nn.modules.batchnorm._BatchNorm``, which spikingjelly's
   ``layer.BatchNorm1d/2d`` subclass) gets ``reset_running_stats()`` (mean 0, variance 1,
   ``num_batches_tracked`` 0) and ``momentum=None``: PyTorch then keeps the *cumulative* average
   of the batch statistics (each batch weighs the same);
2. the model is in eval mode except the BatchNorm modules (train mode: they update their running
   statistics), so nothing else that depends on the mode changes;
3. ``images`` training images, chosen by ``torch.randperm`` seeded with ``seed`` (the first
   ``images`` of a seeded permutation, in that order), pass forward in batches of ``batch_size``
   (64) under ``torch.no_grad``, the neuron state reset before the first batch and after each
   one; the last batch may be smaller and weighs as much as the others;
4. each module's momentum, the modes and the neuron state are restored.

*Relative* recalibration (``relative_to``, what the objective does by default) keeps the trained
statistics and moves them only by what the modification changed: the same images pass through the
unpruned model too (:class:`RelativeReference`, once per study), and each BatchNorm gets
``mean = trained + (recalibrated - unpruned recalibrated)`` and ``var = trained * recalibrated /
unpruned recalibrated``. Recalibrating the *unpruned* model absolutely already changes its
predictions where the training statistics differ from what a few hundred images estimate (on
digits-hard-2-64 it changes 112 of 1,078 validation predictions, docs/acceptance.md): that
noise lands on every recalibrated configuration and widens the paired bound of its confirmation.
The relative rule cancels it: an unchanged model keeps its statistics exactly, and a BatchNorm
upstream of every change is left as trained.

Only BatchNorm buffers change (``running_mean``, ``running_var``, ``num_batches_tracked``);
weights, biases and every other buffer are untouched, and the same model, data, ``images`` and
``seed`` give bit-for-bit the same statistics (CPU). The engine's exactness guarantees (bytes,
structure, equivalence with the masked reference) are about the plain pruned model; recalibration
is a separate step applied after ``Engine.prune``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import PrimeSVTError

RULES = ("relative", "absolute")
"""How recalibrated statistics are used: moved by the difference to the unpruned model's
(``relative_to``, the objective's default) or taken as they are (EagleEye's rule)."""

BATCH_SIZE = 64
"""Recalibration batch size (EagleEye's setting; the numbers in docs/plugin.md use it)."""


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm modules (torch's and spikingjelly's)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def recalibration_set(train: Dataset, images: int, seed: int = 0) -> Dataset:
    """The ``images`` training images recalibration uses: the first ``images`` entries of a
    ``torch.randperm`` seeded with ``seed`` (all of them, in that permuted order, if fewer)."""
    if images < 1:
        raise PrimeSVTError(f"recalibration needs at least one image, got {images}")
    if len(train) == 0:
        raise PrimeSVTError("cannot recalibrate BatchNorm on an empty training set")
    g = torch.Generator().manual_seed(int(seed))
    order = torch.randperm(len(train), generator=g)[: int(images)]
    return Subset(train, order.tolist())


def recalibrate_bn(
    model: nn.Module,
    data: Dataset,
    *,
    images: int | None = None,
    seed: int = 0,
    batch_size: int = BATCH_SIZE,
    device: str | torch.device = "cpu",
    relative_to: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> int:
    """Re-estimate every BatchNorm's running statistics of ``model`` in place (see module docs).

    ``data`` is the training set; with ``images`` the seeded subset :func:`recalibration_set`
    picks is used, without it ``data`` as given (in order). ``relative_to``: the unpruned model's
    statistics recalibrated on the same images, in ``model``'s channels
    (:meth:`RelativeReference.statistics`): the trained statistics move by the difference only.
    Returns the number of images passed forward (0 when the model has no BatchNorm: nothing to
    do, nothing spent).
    """
    from spikingjelly.activation_based import functional

    if batch_size < 1:
        raise PrimeSVTError(f"recalibration batch size must be at least 1, got {batch_size}")
    norms = batchnorms(model)
    if not norms:
        return 0
    dataset = recalibration_set(data, images, seed) if images is not None else data
    if len(dataset) == 0:
        raise PrimeSVTError("cannot recalibrate BatchNorm on an empty data set")
    dev = torch.device(device)
    was_training = model.training
    saved: list[tuple[_BatchNorm, Any, bool]] = [(m, m.momentum, m.track_running_stats) for m in norms]
    for m in norms:  # check them all before changing any: a refused call leaves the model as it was
        if not m.track_running_stats or m.running_mean is None:
            raise PrimeSVTError(f"{type(m).__name__} does not track running statistics: nothing to recalibrate")
    trained = bn_statistics(model) if relative_to is not None else None
    if trained is not None:
        _check_aligned(trained, relative_to)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.eval()
    for m in norms:
        m.train()
    seen = 0
    functional.reset_net(model)  # no membrane state left over from an earlier call
    try:
        with torch.no_grad():
            for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
                try:
                    model(x.to(dev))
                finally:
                    functional.reset_net(model)
                seen += len(x)
    finally:
        for m, momentum, _ in saved:
            m.momentum = momentum
        functional.reset_net(model)
        model.train(was_training)
    if trained is not None:
        _shift(model, trained, relative_to)
    return seen


def bn_statistics(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module name: (running mean, running variance)}`` of every BatchNorm, copied."""
    return {name: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is not None}


def _check_aligned(trained: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   reference: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    for name, (mean, _) in trained.items():
        if name not in reference or reference[name][0].shape != mean.shape:
            raise PrimeSVTError(f"relative recalibration: the reference statistics do not match BatchNorm {name!r} "
                                "(give the unpruned model's statistics pruned to this model's structure)")


def _shift(model: nn.Module, trained: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
           reference: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Trained statistics moved by what recalibration measured beyond the unpruned model's."""
    for name, m in model.named_modules():
        if name not in trained:
            continue
        (mean, var), (ref_mean, ref_var) = trained[name], reference[name]
        ref_mean, ref_var = ref_mean.to(m.running_mean.device), ref_var.to(m.running_var.device)
        mean, var = mean.to(m.running_mean.device), var.to(m.running_var.device)
        ratio = torch.where(ref_var > VAR_FLOOR, m.running_var / ref_var.clamp_min(VAR_FLOOR), torch.ones_like(var))
        m.running_mean.copy_(mean + m.running_mean - ref_mean)
        m.running_var.copy_(var * ratio)


VAR_FLOOR = 1e-12
"""Below this the unpruned model's recalibrated variance (a channel that never fires on the
recalibration images) says nothing: the trained variance is kept."""


class RelativeReference:
    """The unpruned model recalibrated once on the images every configuration is recalibrated on,
    for :func:`recalibrate_bn`'s ``relative_to``; its statistics are cut to a pruned model's
    channels by that model's structure."""

    def __init__(self, model: nn.Module, data: Dataset, *, images: int | None, seed: int = 0,
                 batch_size: int = BATCH_SIZE, device: str | torch.device = "cpu") -> None:
        self.model = copy.deepcopy(model)
        self.images = recalibrate_bn(self.model, data, images=images, seed=seed, batch_size=batch_size, device=device)
        self._full = bn_statistics(self.model)

    def statistics(self, structure: Mapping[str, Any] | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The statistics in the channels of a model pruned to ``structure`` (None: unpruned)."""
        if not structure or not structure.get("layers"):
            return self._full
        from .structure import apply_structure

        return bn_statistics(apply_structure(copy.deepcopy(self.model).cpu(), dict(structure)))
