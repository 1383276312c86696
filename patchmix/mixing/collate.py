"""Mixing inside ``torch.utils.data.DataLoader`` workers, on the raw uint8 batch (timm's ``FastCollateMixup``).

``DataLoader(dataset, batch_sampler=..., collate_fn=MixCollate(mixer), num_workers=k, pin_memory=True)``
serves :class:`~patchmix.mixing.batch.MixedBatch` objects: the collate stacks the samples, optionally transforms the
batch (crop, flip), mixes it with ``mixer`` (any :class:`patchmix.Mix`, the phase-four
:class:`patchmix.guided.GuidedCollate`, any callable ``(x, y) -> MixedBatch``), and the loader pins the result
(``MixedBatch.pin_memory``) for ``batch.to(device, non_blocking=True)``.

Seeding. A forked worker holds a copy of whatever generator the collate had, so without care the k-th batch of
every worker draws the same permutation, masks and weights. ``MixCollate`` therefore never uses the mixer's own
generator; it hands the mixer one per batch:

* keyed batches (exact): when the batch sampler yields :class:`KeyedIndices` (indices that know their
  ``(epoch, step)``, e.g. :class:`EpochBatchSampler`) and the dataset passes the key on (a dataset with
  ``__getitems__`` such as :class:`KeyedDataset` or patchmix's own ``data.SplitDataset``), each batch draws from
  generators seeded by ``(seed, rank, epoch, step, purpose)``. The draws do not depend on the number of workers
  or on which worker serves the batch, and a run resumed mid-epoch draws the same for the remaining steps.
* otherwise, a stream per worker seeded by ``(seed, rank, epoch, worker id)`` on its first batch (``set_epoch``
  reaches workers that are started per epoch; persistent workers continue their stream): reproducible for a
  fixed number of workers, different across workers.

Samples: ``(image, label, ...)`` tuples or lists (positions 0 and 1) or dicts (keys ``"image"`` and ``"label"``,
the names of Hugging Face's image datasets); ``keys=(image_key, label_key)`` names others, e.g. ``("img",
"label")`` or ``(0, 2)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..data.batch import BatchKey, LoadedBatch
from ..seeding import seeded_generator
from . import checks
from .batch import MixedBatch
from .switch import MixSwitch

#: Where a sample holds its image and its label: positions in a tuple or list sample, keys in a dict sample.
SEQUENCE_KEYS = (0, 1)
MAPPING_KEYS = ("image", "label")


class KeyedIndices(list):
    """A batch's dataset indices (a ``list`` of ints) carrying its :class:`BatchKey` as ``key``; it crosses to
    the workers pickled with the indices."""

    def __init__(self, indices, key: BatchKey):
        super().__init__(int(i) for i in indices)
        self.key = BatchKey(int(key[0]), int(key[1]))


class KeyedSamples(list):
    """The samples of one batch (a ``list``) with the batch's key."""

    def __init__(self, samples, key: BatchKey | None):
        super().__init__(samples)
        self.key = key


class EpochBatchSampler(torch.utils.data.Sampler):
    """A batch sampler over given index batches, one epoch at a time: ``set_epoch(epoch, index_batches,
    first_step)`` then iterate; batch ``k`` comes out as :class:`KeyedIndices` with key ``(epoch, first_step +
    k)``. It lives in the main process, so a ``DataLoader`` with persistent workers serves each new epoch."""

    def __init__(self, index_batches=(), epoch: int = 0, first_step: int = 0):
        self.set_epoch(epoch, index_batches, first_step)

    def set_epoch(self, epoch: int, index_batches, first_step: int = 0) -> None:
        self.epoch, self.first_step = int(epoch), int(first_step)
        self.index_batches = [torch.as_tensor(b).tolist() for b in index_batches]

    def __len__(self) -> int:
        return len(self.index_batches)

    def __iter__(self):
        for k, b in enumerate(self.index_batches):
            yield KeyedIndices(b, BatchKey(self.epoch, self.first_step + k))


class KeyedDataset(torch.utils.data.Dataset):
    """Wraps a map-style dataset so that the collate learns each batch's key: the ``DataLoader`` hands a batch's
    indices to ``__getitems__``, which returns the samples with the indices' key."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def __getitems__(self, indices) -> KeyedSamples:
        many = getattr(self.dataset, "__getitems__", None)
        samples = many(list(indices)) if many is not None else [self.dataset[i] for i in indices]
        return KeyedSamples(samples, getattr(indices, "key", None))


def check_keys(keys) -> tuple | None:
    """``keys``: None (the defaults) or ``(image_key, label_key)``: two ints (positions) or two hashable names."""
    if keys is None:
        return None
    try:
        image_key, label_key = keys
        hash(image_key), hash(label_key)
    except (TypeError, ValueError):
        raise ValueError(f"MixCollate: keys must be (image_key, label_key), e.g. ('img', 'label') or (0, 2), "
                         f"got {keys!r}") from None
    return image_key, label_key


def _sample_keys(sample, keys) -> tuple:
    """The ``(image_key, label_key)`` to read ``sample`` with, checked on it (the batch's first sample)."""
    if isinstance(sample, Mapping):
        keys = keys if keys is not None else MAPPING_KEYS
        missing = [k for k in keys if k not in sample]
        if missing:
            raise ValueError(f"MixCollate: a dict sample has no key {missing[0]!r} (its keys: {list(sample)}); pass "
                             f"keys=(image_key, label_key) naming two of them")
    elif isinstance(sample, (tuple, list)):
        keys = keys if keys is not None else SEQUENCE_KEYS
        if not all(isinstance(k, int) and -len(sample) <= k < len(sample) for k in keys):
            raise ValueError(f"MixCollate: a {type(sample).__name__} sample of {len(sample)} items has no items at "
                             f"keys={keys!r}; samples must be (image, label, ...) or dicts (keys=: where they are)")
    else:
        raise ValueError(f"MixCollate: a sample must be an (image, label) tuple or a dict with the keys "
                         f"{MAPPING_KEYS}, got {type(sample).__name__}")
    return keys


def stack_batch(data, keys=None) -> LoadedBatch:
    """``(images (b, C, H, W), labels, key)`` from a :class:`LoadedBatch` or a list of samples: ``(image, label,
    ...)`` tuples or dicts (module docstring; ``keys=(image_key, label_key)``), images tensors or arrays
    ``(C, H, W)``, labels ints (giving int64 ``(b,)``) or soft rows (giving ``(b, K)``)."""
    if isinstance(data, LoadedBatch):
        return data
    samples = list(data)
    if not samples:
        raise ValueError("MixCollate: the batch is empty")
    image_key, label_key = _sample_keys(samples[0], keys)  # checked once, not per sample: a failed read below says so
    try:
        images, labels = [s[image_key] for s in samples], [s[label_key] for s in samples]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"MixCollate: the samples of a batch differ in form: the first is read at keys "
                         f"{(image_key, label_key)!r}, another one has no such items") from None
    # one call per batch, not one torch.as_tensor per sample
    x = torch.stack(images) if isinstance(images[0], Tensor) else torch.from_numpy(np.stack(images))
    y = torch.stack(labels) if isinstance(labels[0], Tensor) else torch.tensor(np.asarray(labels))
    if not y.is_floating_point():
        y = y.to(torch.int64)
    return LoadedBatch(x, y, getattr(data, "key", None))


def worker_output(x: Tensor) -> Tensor | None:
    """In a ``DataLoader`` worker, an empty tensor like ``x`` (same memory format) in shared memory, allocated the
    way ``default_collate`` allocates its batch, so that handing the mixed images to the main process copies
    nothing; None in the main process."""
    if torch.utils.data.get_worker_info() is None:
        return None
    fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last) else torch.contiguous_format
    strides = torch.empty(x.shape, dtype=x.dtype, device="meta", memory_format=fmt).stride()
    storage = x.untyped_storage()._new_shared(x.numel() * x.element_size())
    return x.new_empty(0).set_(storage, 0, x.shape, strides)


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` (a function, bound method or module) takes a keyword ``name``."""
    if isinstance(fn, torch.nn.Module):
        fn = fn.forward
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class MixCollate:
    """``collate_fn`` that stacks, transforms and mixes a batch in the worker: ``collate(batch) -> MixedBatch``.

    Args:
        mixer: ``mixer(x, y) -> MixedBatch`` (any patchmix mixer); it gets ``generator=`` (this batch's
            generator) and ``out=`` (a shared-memory buffer) when its signature takes them.
        seed, rank: the base of every draw (module docstring); ``rank``: the process's rank under DDP.
        transform: ``transform(x, generator) -> x`` applied to the stacked batch before mixing (e.g. crop and
            flip), drawing from its own generator.
        mix_off_epoch: from this epoch on (timm's ``--mixup-off-epoch``; 0 or None: never) batches come unmixed
            (the mixer's ``unmixed(x, y)`` when it has one); the epoch is the batch's key's, else :meth:`set_epoch`'s.
        switch: a :class:`~patchmix.mixing.switch.MixSwitch` to ask instead (shared with whoever else decides by
            it, e.g. the trainer's ``Method``); not together with ``mix_off_epoch``.
        keys: ``(image_key, label_key)``: where a sample holds its image and label (default: positions 0 and 1 of
            a tuple, ``"image"`` and ``"label"`` of a dict).
    """

    def __init__(self, mixer, *, seed: int = 0, rank: int = 0, transform=None, mix_off_epoch: int | None = None,
                 switch: MixSwitch | None = None, keys=None):
        if not callable(mixer):
            raise TypeError(f"MixCollate: mixer must be callable (x, y) -> MixedBatch, got {type(mixer).__name__}")
        if switch is not None and mix_off_epoch is not None:
            raise ValueError("MixCollate: give mix_off_epoch or switch (a MixSwitch that has one), not both")
        if switch is not None and not isinstance(switch, MixSwitch):
            raise ValueError(f"MixCollate: switch must be a patchmix.mixing.switch.MixSwitch, got {type(switch).__name__}")
        self.mixer = mixer
        self.seed = checks.integer("MixCollate", "seed", seed)
        self.rank = checks.integer("MixCollate", "rank", rank, low=0)
        self.transform = transform
        self.switch = switch if switch is not None else MixSwitch(mix_off_epoch)
        self.keys = check_keys(keys)
        self.epoch = 0
        self._stream: torch.Generator | None = None
        self._kwargs = {name for name in ("generator", "out") if _accepts(mixer, name)}

    def set_epoch(self, epoch: int) -> None:
        """The epoch of batches without a key (restarts the per-worker streams of workers started after this)."""
        self.epoch, self._stream = int(epoch), None

    def generators(self, key: BatchKey | None) -> tuple[torch.Generator, torch.Generator]:
        """``(transform generator, mixing generator)`` of a batch (see the module docstring)."""
        if key is not None:
            return (seeded_generator(self.seed, self.rank, key.epoch, key.step, "transform"),
                    seeded_generator(self.seed, self.rank, key.epoch, key.step, "mix"))
        if self._stream is None:
            info = torch.utils.data.get_worker_info()
            self._stream = seeded_generator(self.seed, self.rank, self.epoch, "worker", -1 if info is None else info.id)
        return self._stream, self._stream

    @property
    def mix_off_epoch(self) -> int | None:
        """The switch's off epoch (None: never)."""
        return self.switch.off_epoch

    def mixing(self, epoch: int) -> bool:
        """Whether batches of ``epoch`` are mixed: the switch decides."""
        return self.switch.mixes(epoch)

    def __call__(self, data) -> MixedBatch:
        x, y, key = stack_batch(data, self.keys)
        g_transform, g_mix = self.generators(key)
        if self.transform is not None:
            x = self.transform(x, g_transform)
        if not self.mixing(key.epoch if key is not None else self.epoch):
            owner = getattr(self.mixer, "__self__", self.mixer)  # a bound method's object (GuidedCollate.mix)
            unmixed = getattr(owner, "unmixed", None)
            return unmixed(x, y) if unmixed is not None else MixedBatch.unmixed(x, y)
        kwargs: dict[str, torch.Generator | Tensor | None] = {}
        if "generator" in self._kwargs:
            kwargs["generator"] = g_mix
        if "out" in self._kwargs:
            kwargs["out"] = worker_output(x)
        return self.mixer(x, y, **kwargs)


__all__ = ["EpochBatchSampler", "KeyedDataset", "KeyedIndices", "KeyedSamples", "MixCollate"]
