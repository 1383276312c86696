"""Pair bookkeeping of the guided search: pair ids, slot pools, how many pairs exist, the default ``N``,
and a random individual. Both the fitness (:mod:`.fitness`) and the genetic search (:mod:`.genetic`) use it.

Pairs. For ``K`` classes the search uses the ``Q = K (K + 1) / 2`` unordered class pairs ``(c_i, c_j)`` with
``c_i <= c_j``, numbered row-major (``pair_classes(K)``); a pair's mask has its True cells from ``c_i``.
(``(c_j, c_i)`` with the inverted mask composes the same samples, so ordered pairs would only duplicate.)

Slots. An individual has ``N`` slots, each an active pair with a ``P x P`` mask. With same-class pairs
``"forced"`` the first ``K`` slots hold ``(c, c)`` for every class; ``"allowed"`` lets them compete with the
other pairs; ``"excluded"`` never uses them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..choices import SAME_CLASS, check_choice


def pair_classes(num_classes: int) -> Tensor:
    """All unordered class pairs ``(c_i, c_j)``, ``c_i <= c_j``, row-major: int64 ``(K (K + 1) / 2, 2)``."""
    i, j = np.triu_indices(num_classes)
    return torch.from_numpy(np.stack([i, j], 1).astype(np.int64))


def pair_id(i, j, num_classes: int):
    """Id of the unordered pair ``{i, j}`` in ``pair_classes(num_classes)`` (works on ints and int arrays)."""
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    return lo * num_classes - lo * (lo - 1) // 2 + (hi - lo)


def slot_pools(num_classes: int, same_class: str) -> tuple[np.ndarray, np.ndarray]:
    """``(forced, optional)`` pair ids: the pairs every individual holds, and the pairs slots choose from."""
    check_choice("same_class", same_class, SAME_CLASS)
    cls = pair_classes(num_classes).numpy()
    same = cls[:, 0] == cls[:, 1]
    forced = np.flatnonzero(same) if same_class == "forced" else np.zeros(0, np.int64)
    optional = np.arange(len(cls)) if same_class == "allowed" else np.flatnonzero(~same)
    return forced.astype(np.int64), optional.astype(np.int64)


def available_pairs(num_classes: int, same_class: str) -> int:
    """How many unordered class pairs ``c_i <= c_j`` a policy may use (same-class ones unless excluded)."""
    total = num_classes * (num_classes + 1) // 2
    return total - (num_classes if same_class == "excluded" else 0)


def default_num_pairs(num_classes: int, same_class: str) -> int:
    """The default ``N``: twice the number of classes (the paper's ``N = 2K``), capped by the pairs that
    exist (2 classes have 3 unordered pairs, 1 without the same-class ones)."""
    return min(2 * num_classes, available_pairs(num_classes, same_class))


def check_num_pairs(num_pairs: int, num_classes: int, same_class: str) -> None:
    """``num_pairs`` (``N``) must fit the forced pairs and the available ones."""
    available = available_pairs(num_classes, same_class)
    low = num_classes if same_class == "forced" else 1
    if not low <= num_pairs <= available:
        raise ValueError(
            f"num_pairs = {num_pairs} must lie in [{low}, {available}] for {num_classes} classes with same-class "
            f"pairs {same_class!r}"
        )


def random_genome(rng: np.random.Generator, forced: np.ndarray, optional: np.ndarray, num_pairs: int,
                  grid_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random individual: the forced pairs, then distinct random optional pairs (``pairs (N,)`` int64), and
    uniformly random masks (``masks (N, P, P)`` bool)."""
    free = num_pairs - len(forced)
    pairs = np.concatenate([forced, rng.choice(optional, size=free, replace=False)]).astype(np.int64)
    masks = rng.random((num_pairs, grid_size, grid_size)) < 0.5
    return pairs, masks


__all__ = ["available_pairs", "check_num_pairs", "default_num_pairs", "pair_classes", "pair_id", "random_genome",
           "slot_pools"]
