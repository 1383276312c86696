"""PatchMix: grid-mask pairwise data augmentation with patch-level supervision and a guided genetic search.

Ops live in :mod:`patchmix.ops` (``torch.ops.patchmix.*``); mixing modules in :mod:`patchmix.augment`.
"""

__version__ = "0.1.0"

from . import models, ops, search
from .augment import CutMix, MixedBatch, Mixup, RandomPatchMix
from .guided import GuidedPatchMix
from .losses import PatchMixLoss
from .ops import backends

__all__ = ["CutMix", "GuidedPatchMix", "MixedBatch", "Mixup", "PatchMixLoss", "RandomPatchMix", "backends", "models", "ops", "search", "__version__"]
