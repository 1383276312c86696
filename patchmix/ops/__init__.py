"""Fused ops: one schema per op under ``torch.ops.patchmix``, a CPU kernel in C++, a CUDA kernel in Triton,
the pure-PyTorch reference, fake and autograd registration. ``backends()`` says which kernel serves what;
``check_errors()`` raises what the CUDA kernels found wrong in the data (they report it on the device instead
of syncing, see ``patchmix.ops.errors``)."""

from ._registry import backends
from .box_iou_sweep import box_iou_sweep, box_iou_sweep_reference
from .errors import check_errors
from .grid_mix import grid_mix, grid_mix_reference
from .patchmix_cross_entropy import (
    patchmix_cross_entropy,
    patchmix_cross_entropy_eager,
    patchmix_cross_entropy_reference,
)
from .population_fitness import population_fitness, population_fitness_reference
from .targets import patch_targets, soft_targets

__all__ = ["backends", "box_iou_sweep", "box_iou_sweep_reference", "check_errors", "grid_mix", "grid_mix_reference",
           "patch_targets", "soft_targets", "population_fitness", "population_fitness_reference",
           "patchmix_cross_entropy", "patchmix_cross_entropy_eager", "patchmix_cross_entropy_reference"]
