"""PatchMix: grid-mask pairwise data augmentation with patch-level supervision and a guided genetic search.

Ops live in :mod:`patchmix.ops` (``torch.ops.patchmix.*``); mixing modules in :mod:`patchmix.augment`; the
search in :mod:`patchmix.search` (DEAP is imported on first use of the genetic search); training in
:mod:`patchmix.training`. The documentation is in the repository's ``docs/`` folder.
"""

from . import models, ops, search
from ._version import __version__
from .augment import CutMix, MixedBatch, Mixup, RandomPatchMix
from .guided import GuidedPatchMix
from .losses import PatchMixLoss
from .ops import backends

__all__ = ["CutMix", "GuidedPatchMix", "MixedBatch", "Mixup", "PatchMixLoss", "RandomPatchMix", "backends", "models", "ops", "search", "__version__"]
