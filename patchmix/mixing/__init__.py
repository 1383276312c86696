"""The mixing front end: what turns a batch of images and labels into a :class:`MixedBatch`.

Modules: :mod:`.batch` (:class:`MixedBatch`, the composition rule, dense-target converters), :mod:`.sampling`
(vectorised Beta / Gamma draws, no host read), :mod:`.mix` (:class:`Mix`, timm's knobs plus PatchMix),
:mod:`.mixers` (the paper's single-method mixers :class:`RandomPatchMix`, :class:`MixupMixer`,
:class:`CutMixMixer`), :mod:`.collate` (mixing in DataLoader workers: :class:`MixCollate`), :mod:`.switch`
(:class:`MixSwitch`: whether a batch of an epoch is mixed, the one rule behind ``Mix.enabled``,
``MixCollate(mix_off_epoch=)`` and ``train.mix_off_epoch``) and :mod:`.checks` (the hyperparameter checks). The
ops they call live in :mod:`patchmix.ops`; guided samples from a searched policy, which sit above the search, in
:mod:`patchmix.guided`.

Public: what ``__all__`` lists, the mixing names :mod:`patchmix` exports too. The submodules' other names are
internal (docs/architecture.md, "Public API").
"""

from .batch import MixedBatch
from .collate import EpochBatchSampler, KeyedDataset, MixCollate
from .mix import Mix
from .mixers import CutMixMixer, MixupMixer, RandomPatchMix

__all__ = ["CutMixMixer", "EpochBatchSampler", "KeyedDataset", "Mix", "MixCollate", "MixedBatch", "MixupMixer",
           "RandomPatchMix"]
