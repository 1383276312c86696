"""Seeds derived from names: every random stream of patchmix is a generator seeded by a tuple of parts
(the run's seed, the epoch, the rank, the batch index, a purpose), so a stream is a pure function of where
it is used and never depends on what drew before it (another process, another worker, another method).

This module is a leaf: it imports nothing from patchmix, so the mixing layer (:mod:`patchmix.mixing.collate`) and
the training layer (:mod:`patchmix.training.streams`) share it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across runs, processes and platforms: a hash of their repr)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def seeded_generator(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


__all__ = ["derive_seed", "seeded_generator"]
