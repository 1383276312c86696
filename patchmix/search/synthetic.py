"""Synthetic stand-ins for benchmarks and tests, where no trained model fits the machine: a cache of patch logits
(:func:`synthetic_cache`) and an ``f_T`` whose cells interact (:class:`InteractingCells`) with its validation images
(:func:`synthetic_validation`)."""

from __future__ import annotations

import torch
from torch import nn

from .cache import CachedLogits


def synthetic_cache(
    num_classes: int, per_class: int = 50, grid_size: int = 4, seed: int = 0, dtype: torch.dtype = torch.float16
) -> CachedLogits:
    """A synthetic cache for benchmarks and tests: every class has its own per-cell difficulty, and each
    class is confused with a few "neighbour" classes, so pairs and cells differ in fitness."""
    g = torch.Generator().manual_seed(seed)
    K, PP = num_classes, grid_size * grid_size
    labels = torch.arange(K).repeat_interleave(per_class)
    V = labels.numel()
    difficulty = torch.rand(K, PP, generator=g) * 3.0  # margin of the true class per class and cell
    neighbour = torch.randn(K, K, generator=g)
    logits = torch.randn(V, PP, K, generator=g)
    logits += 0.5 * neighbour[labels][:, None, :]
    logits[torch.arange(V), :, labels] += difficulty[labels] + 0.5 * torch.randn(V, PP, generator=g)
    return CachedLogits(logits.to(dtype), labels, grid_size)


class InteractingCells(nn.Module):
    """A synthetic ``f_T`` whose cells interact: ``forward(x (B, C, H, W)) -> (image_logits (B, K), patch_logits
    (B, K, P, P))``.

    Every class has a random template image. A cell's own evidence for class ``c`` is minus ``scale`` times the
    mean squared distance between its pixels and class ``c``'s template over that cell; its patch logits add
    ``beta`` times a mean of the *other* cells' evidence weighted by ``exp(-distance / length)`` (a CNN's receptive
    field, in one line), so a cell's score depends on which other cells come from another image, by an amount that
    depends on the classes and the distance. Image logits: the mean of the patch logits. A forward pass costs
    ``P^2 * K * C * cell^2`` multiply-adds (26k at K = 100 on 16x16 greyscale), so millions of composed images fit
    a CPU. On it the linear cache ranks random policies at Spearman 0 to 0.2 and the interaction fitness at 0.9 to
    0.99 (``tests/test_interaction.py``, ``bench/bench_interaction.py``)."""

    def __init__(self, num_classes: int, grid_size: int = 4, size: int = 16, channels: int = 1, beta: float = 1.5,
                 length: float = 1.0, scale: float = 6.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.P, self.cell = grid_size, size // grid_size
        self.templates = nn.Parameter(torch.rand(num_classes, channels, size, size, generator=g), requires_grad=False)
        ij = torch.cartesian_prod(torch.arange(grid_size), torch.arange(grid_size)).double()
        dist = torch.cdist(ij, ij)
        weight = torch.exp(-dist / length) * (1 - torch.eye(grid_size ** 2, dtype=torch.float64))
        self.register_buffer("spread", (beta * weight / weight.sum(1, keepdim=True)).float())  # (PP, PP)
        self.scale = scale

    def cells(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, PP, C * cell^2)``, row-major cells."""
        c = self.cell
        return nn.functional.unfold(x, c, stride=c).transpose(1, 2)

    def forward(self, x):
        cells = self.cells(x)  # (B, PP, D)
        t = self.cells(self.templates)  # (K, PP, D)
        # evidence: minus the mean squared distance to each class's template over the cell
        own = -self.scale * (cells.pow(2).mean(-1)[:, :, None] - 2 * torch.einsum("bnd,knd->bnk", cells, t) / t.shape[-1]
                             + t.pow(2).mean(-1).T[None])  # (B, PP, K)
        patch = own + torch.einsum("nm,bmk->bnk", self.spread, own)
        P = self.P
        return patch.mean(1), patch.transpose(1, 2).reshape(x.shape[0], -1, P, P)


def synthetic_validation(model: InteractingCells, per_class: int, noise: float = 0.35, seed: int = 1):
    """``per_class`` images of every class: its template plus uniform noise, clipped to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    K = model.templates.shape[0]
    labels = torch.arange(K).repeat_interleave(per_class)
    images = model.templates.data[labels] + noise * (torch.rand(labels.numel(), *model.templates.shape[1:],
                                                                generator=g) - 0.5)
    return images.clamp(0, 1), labels


__all__ = ["InteractingCells", "synthetic_cache", "synthetic_validation"]
