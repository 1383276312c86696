"""The mixing front end: what turns a batch of images and labels into a :class:`MixedBatch`.

Modules: :mod:`.batch` (:class:`MixedBatch`, the composition rule, dense-target converters), :mod:`.sampling`
(vectorised Beta / Gamma draws, no host read), :mod:`.mix` (:class:`Mix`, timm's knobs plus PatchMix),
:mod:`.augment` (the paper's mixers :class:`Mixup`, :class:`CutMix`, :class:`RandomPatchMix`), :mod:`.collate`
(mixing in DataLoader workers: :class:`MixCollate`) and :mod:`.guided` (:class:`GuidedPatchMix`, phase four's
samples from a searched policy). The ops they call live in :mod:`patchmix.ops`.
"""

from .augment import CutMix, Mixup, RandomPatchMix
from .batch import MixedBatch
from .collate import EpochBatchSampler, KeyedDataset, MixCollate
from .guided import GuidedPatchMix
from .mix import Mix

__all__ = ["CutMix", "EpochBatchSampler", "GuidedPatchMix", "KeyedDataset", "Mix", "MixCollate", "MixedBatch",
           "Mixup", "RandomPatchMix"]
