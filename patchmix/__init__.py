"""PatchMix: grid-mask pairwise data augmentation with patch-level supervision and a guided genetic search.

Ops live in :mod:`patchmix.ops` (``torch.ops.patchmix.*``); mixing modules in :mod:`patchmix.augment`.
"""

__version__ = "0.1.0"

from . import ops
from .augment import CutMix, MixedBatch, Mixup, RandomPatchMix
from .ops import backends

__all__ = ["CutMix", "MixedBatch", "Mixup", "RandomPatchMix", "backends", "ops", "__version__"]
