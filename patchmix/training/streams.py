"""The random streams of a training: every draw of an epoch comes from a generator seeded by
``(seed, epoch[, rank], purpose)``, so a run is deterministic on the CPU and a resumed run continues the
identical sequence.

Streams of one epoch (:class:`EpochStreams`):

* ``order``: the sample order, shared by every rank (each takes its own stride of it);
* ``guided``: phase four's guided draws (class pairs and their images), one rank's own;
* ``augment``: crops and flips, one rank's own;
* ``mix``: the mixers' permutations, Beta draws and masks, one rank's own;
* torch's global generator (weight init before the first epoch, anything a model draws), seeded per epoch.

``order`` and ``guided`` are consumed whole at the start of the epoch (the epoch's index batches), so a
mid-epoch checkpoint only needs the states of ``augment``, ``mix`` and the global generator
(:meth:`EpochStreams.state`). All generators live on the CPU: the draws do not depend on the device.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across runs and platforms)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def _generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


class EpochStreams:
    """The generators of epoch ``epoch`` of rank ``rank`` of a training seeded with ``seed`` (seeds the
    global generator too)."""

    def __init__(self, seed: int, epoch: int, rank: int = 0):
        self.order = _generator(seed, epoch, "order")
        self.guided = _generator(seed, epoch, rank, "guided")
        self.augment = _generator(seed, epoch, rank, "augment")
        self.mix = _generator(seed, epoch, rank, "mix")
        torch.manual_seed(derive_seed(seed, epoch, rank, "torch"))

    def state(self) -> dict:
        """The states a mid-epoch checkpoint needs (CPU byte tensors)."""
        return {"g_aug": self.augment.get_state(), "g_mix": self.mix.get_state(), "torch": torch.get_rng_state()}

    def restore(self, state: dict) -> None:
        self.augment.set_state(state["g_aug"])
        self.mix.set_state(state["g_mix"])
        torch.set_rng_state(state["torch"])


__all__ = ["EpochStreams", "derive_seed"]
