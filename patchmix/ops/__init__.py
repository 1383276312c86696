"""Fused ops: one schema per op under ``torch.ops.patchmix``, a CPU kernel in C++, a CUDA kernel in Triton,
the pure-PyTorch reference, fake and autograd registration. ``backends()`` says which kernel serves what."""

from ._registry import backends, build_info
from .grid_mix import grid_mix, grid_mix_reference
from .patchmix_cross_entropy import patchmix_cross_entropy, patchmix_cross_entropy_reference
from .population_fitness import population_fitness, population_fitness_reference
from .targets import patch_targets, soft_targets

__all__ = ["backends", "build_info", "grid_mix", "grid_mix_reference", "patch_targets", "soft_targets",
           "population_fitness", "population_fitness_reference",
           "patchmix_cross_entropy", "patchmix_cross_entropy_reference"]
