"""The named presets (``--preset NAME``): plain settings, applied on top of :class:`patchmix.config.Config`'s
defaults and under a config file and the flags (:func:`patchmix.config.resolve`). Keys are nested as in a config
file; the ``search`` section holds :class:`patchmix.search.SearchConfig` field names.

* ``digits`` (the default): scikit-learn's bundled 8x8 digits, the small CNN, a budget that runs the whole
  four-phase workflow with five methods and three seeds in a few minutes on a 2-core CPU (a search of
  population 200 for at most 100 generations).
* ``mnist5k``: the paper's comparison on real digits at the paper's geometry (5,000 MNIST digits padded to
  32x32, ``P = 4`` gives 8x8-pixel cells), sized for a 2-core CPU: ``small_resnet``, a small random crop, batch
  128, SGD lr 0.1 with cosine annealing, the paper's search (population 500, 250 generations). The epoch
  budget is the one at which the mixing methods' validation accuracy stops rising (docs/results.md).
* ``fmnist``: the same comparison on Fashion-MNIST (read from its idx files, :func:`patchmix.data.load_idx`): a
  class-balanced 10,000 of the 60,000 training images (``data.train_subset``; val 1,000 of them, test the 10,000
  ``t10k`` images), ``small_resnet``, the mnist5k training recipe, a crop without flips, 80 epochs, 5 seeds; the
  augmentation (whether to flip) and the epoch budget were measured so that the whole comparison fits 90
  minutes on a 2-core CPU (docs/results.md, "Fashion-MNIST: data and budget").
* ``fmnist-loc``: weakly supervised localisation on cluttered 64x64 Fashion-MNIST canvases (docs/localization.md):
  the fmnist recipe on 10,000 training canvases for 30 epochs and 3 seeds (71 minutes on a 2-core CPU; the budget
  from a measured curve, docs/localization.md), scored by the CAMs of the image
  classifier and, for the patch-supervised methods, of the patch classifier; no FGSM.
* ``wsol-cub``: wsolevaluation's ResNet-50 CAM setting on CUB (docs/transfer.md): ImageNet weights from
  ``--init``, stride 1 in the last stage, ``layer4`` and the classifiers at 10x the learning rate, 50 epochs, batch
  32, SGD Nesterov lr 2e-4 x0.1 every 15 epochs, weight decay 1e-4, ImageNet normalisation; it needs ``--data DIR``.
* ``paper-cifar``: the paper's CIFAR recipe (section 4.2): 400 epochs, batch 100, SGD with Nesterov
  momentum 0.9, weight decay 5e-4, learning rate 0.1 with cosine annealing, ``P = 4``, ``alpha = 1``,
  ResNet-32, and the paper's search (population 500, 250 generations, crossover 0.5, mutation 0.3). It names no
  data source: the command line needs ``--data`` with a CIFAR folder (:data:`PRESET_NEEDS_DATA`).
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    # tiny 8x8 convolutions: one intra-op thread beats two (and is far faster on a busy machine)
    "digits": {"model": {"width": 16}, "run": {"threads": 1},
               "search": {"population": 200, "generations": 100, "patience": 30, "checkpoint_every": 5}},
    # the epoch budget: see docs/results.md ("How the mnist5k budget was chosen")
    "mnist5k": {"data": {"source": "mnist5k"}, "model": {"grid_size": 4},
                "train": {"epochs": 100, "batch_size": 128, "lr": 0.1, "schedule": "cosine"},
                "run": {"threads": 2},
                "search": {"population": 500, "generations": 250}},
    # Fashion-MNIST from its idx files: the epoch budget at which the mixing methods flatten within the time target,
    # and the crop alone, since a flip did not help (measured: docs/results.md, "Fashion-MNIST: data and budget")
    "fmnist": {"data": {"source": "fashion-mnist", "train_subset": 10000, "augment": "crop"},
               "model": {"name": "small_resnet", "grid_size": 4},
               "train": {"epochs": 80, "batch_size": 128, "lr": 0.1, "schedule": "cosine"},
               "run": {"threads": 2, "seeds": (0, 1, 2, 3, 4)},
               "search": {"population": 500, "generations": 250}},
    # weakly supervised localisation on the cluttered Fashion-MNIST set (64 x 64; docs/localization.md): the five
    # methods, CAMs of the image classifier and, for Random PatchMix, of the patch classifier, scored on the 10,000
    # test canvases with thresholds chosen on the 500 box-labelled val canvases; the budget is in
    # docs/localization.md
    "fmnist-loc": {"data": {"source": "fmnist-loc", "train_subset": 10000, "augment": "crop"},
                   "model": {"name": "small_resnet", "grid_size": 4},
                   "train": {"epochs": 30, "batch_size": 128, "lr": 0.1, "schedule": "cosine"},
                   "run": {"threads": 2, "seeds": (0, 1, 2), "fgsm_epsilons": (), "cam_heads": ("image", "patch")},
                   "search": {"population": 500, "generations": 250}},
    # wsolevaluation's ResNet-50 CAM setting on CUB (docs/transfer.md: the recipe and where each number comes from):
    # ImageNet weights from --init, layer4 at stride 1 (14 x 14 CAMs at 224), layer4 and the classifiers at 10x the
    # learning rate, SGD Nesterov, 50 epochs, batch 32, x0.1 every 15 epochs; the data from --data DIR
    "wsol-cub": {"data": {"source": "", "image_size": 224, "augment": "crop-flip"},
                 "model": {"name": "resnet50", "grid_size": 4, "last_stride": 1, "normalize": "imagenet"},
                 "train": {"epochs": 50, "batch_size": 32, "lr": 2e-4, "momentum": 0.9, "nesterov": True,
                           "weight_decay": 1e-4, "schedule": "step", "lr_step_epochs": 15,
                           "lr_mult": ("layer4:10", "classifier:10")}},
    "paper-cifar": {
        "data": {"source": "", "augment": "crop-flip"},
        "model": {"name": "resnet32", "grid_size": 4},
        "train": {"epochs": 400, "batch_size": 100, "lr": 0.1, "momentum": 0.9, "nesterov": True,
                  "weight_decay": 5e-4, "schedule": "cosine", "alpha": 1.0},
        "search": {"population": 500, "generations": 250, "cxpb": 0.5, "mutpb": 0.3},
    },
}


#: The presets that name no data source, and what ``--data`` must give them: without it such a preset would train
#: its recipe on the default 8x8 digits.
PRESET_NEEDS_DATA = {"paper-cifar": "a CIFAR folder (--data path/to/cifar-10-batches-py or cifar-100-python)",
                     "wsol-cub": "a folder in wsolevaluation's layout (--data DIR holding metadata/{train,val,test}/ "
                                 "and the images)"}


def preset_settings(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (nested, as in a config file); :class:`~patchmix.errors.ConfigError` for a
    name that is not a preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


__all__ = ["PRESETS", "PRESET_NEEDS_DATA", "preset_settings"]
