"""The batch a dataset hands a collate when it stacks the batch itself (``__getitems__``), and the key that says
which batch of a training it is. Mixing reads both; they live here so that data never imports mixing."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class BatchKey(NamedTuple):
    """Which batch of a training: the epoch and the step within it."""

    epoch: int
    step: int


class LoadedBatch(NamedTuple):
    """A batch already stacked by the dataset: ``images (b, C, H, W)``, ``labels (b,)`` and its key (or None)."""

    images: Tensor
    labels: Tensor
    key: BatchKey | None
