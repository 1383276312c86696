"""Getting a split's images to the model: image files decoded once into memory when they fit
(:func:`decode_in_memory`), the channel statistics, an epoch's sample order, batches of uint8 images
(:func:`load_batches`, :func:`batches`), :class:`SplitDataset` for a ``DataLoader``, and :func:`to_float`."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from .batch import LoadedBatch
from .dataset import Dataset, Split

#: ``data.decode_max_mb``: image-file datasets whose decoded uint8 images (train + val + test) take at most
#: this many MiB are decoded once into memory. 2 GiB holds Tiny ImageNet at 64x64 (110,000 images, 1.26 GiB)
#: and any folder tree of up to ~699,000 32x32 colour images; larger trees stay files, decoded per batch.
DECODE_MAX_MB = 2048.0


def decode_in_memory(ds: Dataset, max_mb: float = DECODE_MAX_MB, workers: int = 0) -> bool:
    """Decode the image files of every split of ``ds`` once into uint8 tensors (``Split.images``), by ``workers``
    processes, when they take at most ``max_mb`` MiB in all; returns whether it did. Decoding every epoch through
    Pillow costs far more than the training step of a small model; a gather from memory costs next to nothing."""
    splits = [sp for sp in (ds.train, ds.val, ds.test) if sp.images is None and sp.files is not None]
    need = sum(len(sp) * sp.channels * sp.image_size ** 2 for sp in splits)
    if not splits or need > max_mb * 2**20:
        return False
    for sp in splits:
        chunks = list(torch.arange(len(sp)).split(256))
        sp.images = torch.cat([x for x, _ in load_batches(sp, chunks, workers)])
    return True


def channel_stats(split: Split, max_images: int = 2000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over (at most ``max_images`` evenly spaced) training images."""
    n = len(split)
    idx = torch.linspace(0, n - 1, min(n, max_images)).long().unique()
    x, _ = split.get(idx)
    x = x.double() / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def epoch_order(n: int, generator: torch.Generator | None, rank: int = 0, world: int = 1) -> Tensor:
    """The sample order of one epoch: a permutation (or ``arange`` without a generator), padded by wrapping
    to a multiple of ``world`` and strided so each rank takes a disjoint, equally long share."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if world > 1:
        total = -(-n // world) * world
        if total > n:
            order = torch.cat([order, order[: total - n]])
        order = order[rank::world]
    return order


class _Batches(torch.utils.data.Dataset):
    def __init__(self, split: Split, chunks: list[Tensor]):
        self.split, self.chunks = split, chunks

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        return self.split.get(self.chunks[i])


class SplitDataset(torch.utils.data.Dataset):
    """A split as a map-style dataset for a ``DataLoader``: ``dataset[i] = (image uint8 (C, H, W), label)``, and
    a whole batch at once through ``__getitems__``: one gather from memory (or the batch's files decoded), as a
    :class:`patchmix.data.batch.LoadedBatch` that carries the batch's key when the batch sampler gives one."""

    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.split.load(i), int(self.split.labels[i])

    def __getitems__(self, indices) -> LoadedBatch:
        x, y = self.split.get(list(indices))
        return LoadedBatch(x, y, getattr(indices, "key", None))


def load_batches(split: Split, index_batches, workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 images ``(b, C, H, W)`` and int64 labels ``(b,)`` for each index tensor of ``index_batches``, in
    order; image files are decoded by ``workers`` processes (in-memory splits never need any)."""
    index_batches = list(index_batches)
    if split.images is not None or workers == 0:
        for idx in index_batches:
            yield split.get(idx)
        return
    loader = torch.utils.data.DataLoader(_Batches(split, index_batches), batch_size=None, shuffle=False,
                                         num_workers=workers, persistent_workers=False)
    yield from loader


def batches(split: Split, batch_size: int, order: Tensor, drop_last: bool = False,
            workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """:func:`load_batches` over ``order`` cut into batches of ``batch_size`` (the last one shorter, or dropped
    with ``drop_last`` when there is more than one)."""
    chunks = list(order.split(batch_size))
    if drop_last and chunks and chunks[-1].numel() < batch_size and len(chunks) > 1:
        chunks = chunks[:-1]
    return load_batches(split, chunks, workers)


def to_float(x: Tensor, device, channels_last: bool = False) -> Tensor:
    """uint8 batch -> float32 in ``[0, 1]`` on ``device`` (channels_last on request)."""
    x = x.to(device, non_blocking=True).float().div_(255.0)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
