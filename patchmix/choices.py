"""Every closed set of names, defined once: configuration validation, the CLI's ``choices=``, the search's
argument checks and the report's labels all read these constants.

This module is a leaf: it imports nothing from patchmix, so any layer may import it.
"""

from __future__ import annotations

#: The training methods, in the order the workflow trains and the report lists them: the paper's (Table 1),
#: then ``mix``, timm's recipe (Mixup, CutMix and PatchMix chosen per sample or per batch by ``train.mix_weights``).
METHODS = ("base", "mixup", "cutmix", "random", "guided", "mix")
#: What ``patchmix run`` trains by default (``run.methods``): the paper's comparison.
WORKFLOW_METHODS = ("base", "mixup", "cutmix", "random", "guided")
#: How the report and the CLI name each method.
METHOD_LABELS = {"base": "Base", "mixup": "Mixup", "cutmix": "CutMix", "random": "Random PatchMix",
                 "guided": "Guided PatchMix", "mix": "Mix"}
#: Methods trained with the patch term of ``L_T`` (the others train the image term ``L_O`` only); ``mix`` gives
#: it to its PatchMix samples only.
PATCH_SUPERVISED = ("random", "mix")

#: ``patchmix.Mix``'s methods, in the order of its ``weights`` (and of ``train.mix_weights``).
MIX_METHODS = ("mixup", "cutmix", "patchmix")
#: ``train.mix_mode`` / ``Mix(mode=)``: one draw per batch, per pair of samples, or per sample (timm's names).
MIX_MODES = ("batch", "pair", "elem")

#: ``patchmix ablate``: the paper's ablations (Table 6: fitness and same-class pairs; Table 7: supervision and
#: grid size).
ABLATIONS = ("table6", "table7")

#: ``data.format``: "auto" detects the format from the folder's files.
DATA_FORMATS = ("auto", "digits", "mnist5k", "idx", "cifar10", "cifar100", "tinyimagenet", "folder", "wsol",
                "fmnist-loc")
#: ``data.augment``: "auto" is the dataset's default: crop + flip for photos, crop for mnist5k, the idx datasets
#: (digits, characters, clothes) and fmnist-loc, none for the 8x8 digits.
AUGMENTATIONS = ("auto", "crop-flip", "crop", "none")
#: The three splits of a dataset.
SPLITS = ("train", "val", "test")

#: The classifiers whose class activation maps a localisation score reads (patchmix.localization).
CAM_HEADS = ("image", "patch")

#: ``train.schedule``: the learning-rate schedule.
SCHEDULES = ("cosine", "step", "constant")
#: ``run.channels_last``: "auto" is on for CUDA devices.
CHANNELS_LAST = ("auto", "on", "off")

#: ``search.same_class``: how same-class pairs ``(c, c)`` are treated (paper Table 6).
SAME_CLASS = ("forced", "allowed", "excluded")
#: ``search.objective``: the per-patch score of the cached fitness.
OBJECTIVES = ("logprob", "accuracy")
#: ``search.direction``: minimise (the paper's choice, hardest interpolations) or maximise the fitness.
DIRECTIONS = ("min", "max")
#: ``search.crossover``: mask crossover of shared pairs: each cell from either parent, or the paper's halves.
CROSSOVERS = ("uniform", "half")
#: ``search.replacement``: the next generation: parents and offspring compete (DEAP's mu + lambda), or the
#: paper's generational step (the elite and the offspring).
REPLACEMENTS = ("plus", "generational")
#: ``search.fitness`` (``--fitness``): the search's fitness: a per-pair table of each cell's score on composed
#: images that depends on the other cells (fitted on f_T), a table of each cell scored on its unmixed source, or
#: f_T run on every composed sample of every individual (the paper's exact fitness: no table, I * N * S forward
#: passes per generation).
FITNESSES = ("interaction", "linear", "exact")
#: ``search.solver``: the DEAP genetic search, or the exact optimum by enumeration (patch-only fitness, P <= 4).
SOLVERS = ("ga", "exhaustive")
#: ``search.mask_distribution``: the random masks the interaction model is fitted on (every cell with
#: probability 1/2, or with a fill drawn per mask).
MASK_DISTRIBUTIONS = ("half", "spread")


def check_choice(name: str, value, choices, error: type[Exception] = ValueError):
    """``value`` when it is one of ``choices``; else raises ``error`` naming the setting and the choices."""
    if value not in choices:
        raise error(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value
