"""The training batches: one ``torch.utils.data.DataLoader`` per training over the training split, fed one
epoch's index batches at a time.

* batch sampler: :class:`patchmix.mixing.collate.EpochBatchSampler` over the epoch's index batches (a function of
  ``(seed, epoch, rank)``, :meth:`Method.index_batches`), each tagged with its ``(epoch, step)``;
* dataset: :class:`patchmix.data.SplitDataset`, one gather per batch from memory (images decoded once) or the
  batch's files decoded;
* ``collate_fn``: :meth:`Method.collate`, crop/flip and mixing of the uint8 batch with generators seeded per
  batch, so the batches are the same for any ``data.workers`` and a mid-epoch resume redraws them exactly;
* ``data.workers`` worker processes, persistent across the epochs, ``data.prefetch_factor`` batches ahead each;
  pinned memory on CUDA devices, so the copy to the device does not block.

:meth:`TrainLoader.epoch` yields each :class:`~patchmix.mixing.batch.MixedBatch` on the device with its images as
``[0, 1]`` floats (channels-last on request), the uint8 images having crossed to the device (4x fewer bytes).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .. import data as data_mod
from ..mixing.batch import MixedBatch
from ..mixing.collate import EpochBatchSampler
from .methods import Method
from .runtime import Runtime


def to_device(batch: MixedBatch, rt: Runtime) -> MixedBatch:
    """``batch`` on ``rt.device`` (non-blocking from pinned memory) with uint8 images as ``[0, 1]`` floats."""
    batch = batch.to(rt.device, non_blocking=True)
    images = batch.images
    if not images.is_floating_point():
        images = images.float().div_(255.0)
    if rt.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    batch.images = images
    return batch


class EpochBatches:
    """One epoch's batches from ``loader`` on the device (sized, iterable once per epoch)."""

    def __init__(self, loader: torch.utils.data.DataLoader, rt: Runtime):
        self.loader, self.rt = loader, rt

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[MixedBatch]:
        for batch in self.loader:
            yield to_device(batch, self.rt)


class TrainLoader:
    """The ``DataLoader`` of one training of ``plan`` seeded with ``seed`` (module docstring). ``close()`` (or
    leaving the ``with`` block) ends its workers."""

    def __init__(self, plan: Method, seed: int):
        d, rt = plan.cfg.data, plan.rt
        self.rt = rt
        self.sampler = EpochBatchSampler()
        self.collate = plan.collate(seed)
        self.loader = torch.utils.data.DataLoader(
            data_mod.SplitDataset(plan.ds.train), batch_sampler=self.sampler, collate_fn=self.collate,
            num_workers=d.workers, persistent_workers=d.workers > 0, pin_memory=rt.device.type == "cuda",
            prefetch_factor=d.prefetch_factor if d.workers > 0 else None)

    def epoch(self, epoch: int, index_batches, first_step: int = 0) -> EpochBatches:
        """The batches of steps ``first_step, ...`` of ``epoch`` (``index_batches``: all the epoch's steps)."""
        self.sampler.set_epoch(epoch, index_batches[first_step:], first_step)
        self.collate.set_epoch(epoch)
        return EpochBatches(self.loader, self.rt)

    def close(self) -> None:
        """Stop the worker processes (dropping the loader drops its persistent iterator, which shuts them down)."""
        self.loader = None

    def __enter__(self) -> TrainLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["EpochBatches", "TrainLoader", "to_device"]
