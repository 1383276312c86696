"""PatchMix: grid-mask pairwise data augmentation with patch-level supervision and a guided genetic search.

The public API is what ``__all__`` lists (docs/architecture.md, "Public API"): :class:`Mix`, the one front end with
timm's ``Mixup`` arguments plus PatchMix; the single-method mixers :class:`RandomPatchMix`, :class:`MixupMixer` and
:class:`CutMixMixer` (:mod:`patchmix.mixing.mixers`); :class:`MixedBatch`; :class:`PatchMixLoss`; mixing in
DataLoader workers (:class:`MixCollate`); guided samples from a searched policy (:class:`GuidedPatchMix`,
:mod:`patchmix.guided`); the ops (:mod:`patchmix.ops`, ``torch.ops.patchmix.*``); the search
(:mod:`patchmix.search`, DEAP imported on first use of the genetic search); and the models
(:mod:`patchmix.models`). The documentation is in the repository's ``docs/`` folder.
"""

from . import models, ops, search
from ._version import __version__
from .guided import GuidedPatchMix
from .losses import PatchMixLoss
from .mixing.batch import MixedBatch
from .mixing.collate import EpochBatchSampler, KeyedDataset, MixCollate
from .mixing.mix import Mix
from .mixing.mixers import CutMixMixer, MixupMixer, RandomPatchMix
from .ops import backends

__all__ = ["CutMixMixer", "EpochBatchSampler", "GuidedPatchMix", "KeyedDataset", "Mix", "MixCollate", "MixedBatch",
           "MixupMixer", "PatchMixLoss", "RandomPatchMix", "backends", "models", "ops", "search", "__version__"]

#: Names that misled and were renamed: the old name -> what to use (CHANGELOG.md).
_RENAMED = {
    "Mixup": "patchmix.Mix(mixup_alpha=..., cutmix_alpha=..., ...) takes timm's Mixup arguments; the single-method "
             "Mixup with one alpha is patchmix.MixupMixer(alpha)",
    "CutMix": "patchmix.Mix(mixup_alpha=0, cutmix_alpha=...) takes timm's Mixup arguments; the single-method "
              "CutMix with one alpha is patchmix.CutMixMixer(alpha)",
}


def __getattr__(name: str):
    if name in _RENAMED:
        raise AttributeError(f"patchmix.{name} was renamed: {_RENAMED[name]}", name=name, obj=None)
    raise AttributeError(f"module 'patchmix' has no attribute {name!r}", name=name, obj=None)
