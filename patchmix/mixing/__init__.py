"""The mixing front end: what turns a batch of images and labels into a :class:`MixedBatch`.

Modules: :mod:`.batch` (:class:`MixedBatch`, the composition rule, dense-target converters), :mod:`.sampling`
(vectorised Beta / Gamma draws, no host read), :mod:`.mix` (:class:`Mix`, timm's knobs plus PatchMix),
:mod:`.augment` (the paper's mixers :class:`Mixup`, :class:`CutMix`, :class:`RandomPatchMix`), :mod:`.collate`
(mixing in DataLoader workers: :class:`MixCollate`), :mod:`.guided` (:class:`GuidedPatchMix`, phase four's
samples from a searched policy), :mod:`.switch` (:class:`MixSwitch`: whether a batch of an epoch is mixed, the one
rule behind ``Mix.enabled``, ``MixCollate(mix_off_epoch=)`` and ``train.mix_off_epoch``) and :mod:`.checks` (the
hyperparameter checks). The ops they call live in :mod:`patchmix.ops`.
"""

from .augment import CutMix, Mixup, RandomPatchMix
from .batch import MixedBatch
from .collate import EpochBatchSampler, KeyedDataset, MixCollate
from .guided import GuidedPatchMix
from .mix import Mix
from .switch import MixSwitch

__all__ = ["CutMix", "EpochBatchSampler", "GuidedPatchMix", "KeyedDataset", "Mix", "MixCollate", "MixSwitch",
           "MixedBatch", "Mixup", "RandomPatchMix"]
