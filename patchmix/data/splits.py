"""Splits of a labelled set: stratified hold-outs, class-balanced subsets and splits, and the validation set
carved from a training set beside a given test set. Every draw is fixed by a seed."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held_out)``: ``fraction`` of each class held out, fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n_held = int(round(idx.numel() * fraction))
        if idx.numel() > 1:
            n_held = min(max(n_held, 1), idx.numel() - 1)
        else:
            n_held = 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.sort(torch.cat(keep)).values, torch.sort(torch.cat(held)).values


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Exactly ``min(n, len(labels))`` sorted indices with the classes as even as their sizes allow, fixed by
    ``seed`` (class-ordered splits would lose whole classes to a plain "first n")."""
    n = min(int(n), labels.numel())
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(labels.numel(), generator=g)
    lab = labels[perm]
    grouped = torch.argsort(lab, stable=True)  # by class, keeping the random order inside each class
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(grouped)
    rank[grouped] = torch.arange(lab.numel()) - starts[lab[grouped]]  # position within its class
    round_robin = torch.argsort(rank * counts.numel() + lab)  # first of every class, then second, ...
    return torch.sort(perm[round_robin[:n]]).values


def class_balanced_split(labels: Tensor, fractions: tuple[float, float, float], seed: int
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted indices ``(train, val, test)``: of each class's images (in a permutation fixed by ``seed``) the
    first ``fractions[0]`` go to train, the next ``fractions[1]`` to val, the rest to test; a class of at
    least 3 images puts one or more in each split."""
    g = torch.Generator().manual_seed(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=g)]
        n = idx.numel()
        n_val = min(max(int(round(n * fractions[1])), 1), n) if n >= 3 else 0
        n_test = min(max(int(round(n * fractions[2])), 1), n - n_val - 1) if n >= 3 else 0
        n_train = n - n_val - n_test
        for part, chunk in zip(parts, idx.split([n_train, n_val, n_test]), strict=True):
            part.append(chunk)
    return tuple(torch.sort(torch.cat(p)).values for p in parts)


def carve_val(labels: Tensor, val_fraction: float, split_seed: int, train_subset: int | None
               ) -> tuple[Tensor, Tensor, str]:
    """Indices ``(train, val)`` of a training set whose test set is given: a class-balanced ``val_fraction`` held
    out, from all of it or from a class-balanced subset of ``train_subset`` images (``data.train_subset``, taken
    before the split); and the words for the split rule."""
    pool = torch.arange(labels.numel())
    what = f"the {labels.numel()} training images"
    if train_subset:
        pool = balanced_subset(labels, train_subset, split_seed)
        what = f"a class-balanced subset of {pool.numel()} of " + what
    keep, held = stratified_split(labels[pool], val_fraction, split_seed)
    return pool[keep], pool[held], what
