"""PatchMix: grid-mask pairwise data augmentation with patch-level supervision and a guided genetic search.

Ops live in :mod:`patchmix.ops` (``torch.ops.patchmix.*``); the mixed batch in :mod:`patchmix.mixing.batch`; the
timm-style front end :class:`Mix` in :mod:`patchmix.mixing.mix` and the paper's mixers in :mod:`patchmix.mixing.augment`;
mixing in DataLoader workers in :mod:`patchmix.mixing.collate`; the search in :mod:`patchmix.search` (DEAP is imported
on first use of the genetic search); training in :mod:`patchmix.training`. The documentation is in the
repository's ``docs/`` folder.
"""

from . import models, ops, search
from ._version import __version__
from .losses import PatchMixLoss
from .mixing.augment import CutMix, Mixup, RandomPatchMix
from .mixing.batch import MixedBatch
from .mixing.collate import EpochBatchSampler, KeyedDataset, MixCollate
from .mixing.guided import GuidedPatchMix
from .mixing.mix import Mix
from .ops import backends

__all__ = ["CutMix", "EpochBatchSampler", "GuidedPatchMix", "KeyedDataset", "Mix", "MixCollate", "MixedBatch",
           "Mixup", "PatchMixLoss", "RandomPatchMix", "backends", "models", "ops", "search", "__version__"]
