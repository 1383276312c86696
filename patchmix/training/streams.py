"""The random streams of a training: every draw of an epoch comes from a generator seeded by
``(seed, epoch[, rank], purpose)``, so a run is deterministic on the CPU and a resumed run continues the
identical sequence.

Streams of one epoch (:class:`EpochStreams`):

* ``order``: the sample order, shared by every rank (each takes its own stride of it);
* ``guided``: phase four's guided draws (class pairs and their images), one rank's own;
* torch's global generator (weight init before the first epoch, anything a model draws), seeded per epoch.

``order`` and ``guided`` are consumed whole at the start of the epoch (the epoch's index batches), so a
mid-epoch checkpoint only needs the global generator's state (:meth:`EpochStreams.state`). The crops, flips
and mixing of a batch draw in the data loader from generators seeded per batch by ``(seed, rank, epoch, step,
purpose)`` (:class:`patchmix.mixing.collate.MixCollate`): they depend neither on the number of loader workers nor on
what ran before, so a resumed epoch redraws the remaining batches exactly. All generators live on the CPU:
the draws do not depend on the device.
"""

from __future__ import annotations

import torch

from ..seeding import derive_seed, seeded_generator


class EpochStreams:
    """The generators of epoch ``epoch`` of rank ``rank`` of a training seeded with ``seed`` (seeds the
    global generator too)."""

    def __init__(self, seed: int, epoch: int, rank: int = 0):
        self.order = seeded_generator(seed, epoch, "order")
        self.guided = seeded_generator(seed, epoch, rank, "guided")
        torch.manual_seed(derive_seed(seed, epoch, rank, "torch"))

    def state(self) -> dict:
        """The states a mid-epoch checkpoint needs (CPU byte tensors)."""
        return {"torch": torch.get_rng_state()}

    def restore(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])


def loader_seed(seed: int) -> int:
    """The base seed of a training's per-batch loader draws (crops, flips, mixing)."""
    return derive_seed(seed, "loader")


__all__ = ["EpochStreams", "derive_seed", "loader_seed"]
