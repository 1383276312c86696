"""The exact fitness: ``f_T`` run on the composed validation images themselves (:class:`ExactFitness`), the
ground truth the cached tables approximate and the paper's own fitness, and the rank correlation a table is judged
by (:func:`rank_correlation`, :func:`fitness_rank_correlation`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from .fitness import CachedFitness, random_population
from .pairs import default_num_pairs
from .scoring import composed_scores, model_device


class ExactFitness:
    """Fitness with real images: each draw ``(a, b)`` is composed with ``patchmix.ops.grid_mix`` and run
    through ``model`` (:func:`patchmix.search.scoring.composed_scores`); patch ``n`` is scored against its patch
    target with the fitness's objective, and the image-level term (when ``fitness.image_weight != 0``) scores
    the model's image logits against the soft label with the exact pixel ``lam``. The ground truth the cached
    tables approximate, and the paper's own fitness: the search can use it directly (``search.table = exact``,
    ``table_kind == "exact"``), at ``I * N * S`` forward passes per generation (split across the ranks under
    ``torchrun``).

    ``__call__(pairs (I, N), masks (I, N, P, P)) -> (I,)`` float64; :meth:`per_draw` keeps the draws apart.
    Cost: ``I * N_active * S`` forward passes.

    Args:
        model: ``f_T``; images: the cached validation set ``(V, C, H, W)``, float in ``[0, 1]`` or uint8.
        fitness: gives the objective, the image weight, the pairs' classes and (by default) the draws.
        draws: int64 ``(Q, S, 2)`` draws to compose instead of ``fitness.draws``: independent draws
            (:func:`draw_pairs` with another seed) score a proxy on images it was not fitted on.
    """

    table_kind = "exact"

    def __init__(self, model: nn.Module, images: Tensor, fitness: CachedFitness, *, draws: Tensor | None = None,
                 batch_size: int = 256, device=None):
        if images.dim() != 4 or images.shape[0] != fitness.cache.num_images:
            raise ValueError(
                f"ExactFitness: images must be the cached validation set (V, C, H, W) with V = "
                f"{fitness.cache.num_images}, got {tuple(images.shape)}"
            )
        draws = fitness.draws if draws is None else draws
        if draws.dtype != torch.int64 or draws.dim() != 3 or draws.shape[0] != fitness.num_pairs or draws.shape[2] != 2:
            raise ValueError(f"ExactFitness: draws must be int64 (Q, S, 2) with Q = {fitness.num_pairs}, got "
                             f"{draws.dtype} {tuple(draws.shape)}")
        self.model, self.images, self.fitness, self.draws = model, images, fitness, draws
        self.batch_size = int(batch_size)
        self.device = model_device(model, device)

    # what the search reads of a fitness: the base fitness's classes, cache and settings
    cache = property(lambda self: self.fitness.cache)
    classes = property(lambda self: self.fitness.classes)
    objective = property(lambda self: self.fitness.objective)
    image_weight = property(lambda self: self.fitness.image_weight)
    seed = property(lambda self: self.fitness.seed)
    num_classes = property(lambda self: self.fitness.num_classes)
    num_pairs = property(lambda self: self.fitness.num_pairs)
    grid_size = property(lambda self: self.fitness.grid_size)

    @property
    def num_draws(self) -> int:
        return self.draws.shape[1]

    def fingerprint(self) -> bytes:
        """What a search checkpoint must match on resume: the draws, the settings and ``f_T``'s weights."""
        parts = [self.draws.numpy().tobytes(), f"{self.objective}|{self.image_weight}|{self.grid_size}".encode()]
        parts += [t.detach().cpu().contiguous().numpy().tobytes() for t in self.model.state_dict().values()]
        return b"".join(parts)

    def per_draw(self, pairs, masks) -> Tensor:
        """``(I, S)`` float64: per individual and draw, the mean over its active slots of the composed sample's
        score (NaN for an individual without an active slot)."""
        pairs = torch.as_tensor(pairs).cpu()
        masks = torch.as_tensor(masks).cpu()
        n_ind = masks.shape[0]
        f, S = self.fitness, self.num_draws
        ii, kk = torch.nonzero(pairs >= 0, as_tuple=True)
        q = pairs[ii, kk]
        rep = lambda t: t.repeat_interleave(S, 0)  # noqa: E731  (one row per slot and draw)
        scores, image = composed_scores(
            self.model, self.images, self.draws[q, :, 0].reshape(-1), self.draws[q, :, 1].reshape(-1),
            rep(masks[ii, kk]), rep(f.classes[q, 0]), rep(f.classes[q, 1]), objective=f.objective,
            image_term=f.image_weight != 0.0, batch_size=self.batch_size, device=self.device)
        per_sample = scores.mean(-1)
        if image is not None:
            per_sample = per_sample + f.image_weight * image
        total = torch.zeros(n_ind, S, dtype=torch.float64).index_add_(0, ii, per_sample.reshape(-1, S))
        count = torch.zeros(n_ind, dtype=torch.float64).index_add_(0, ii, torch.ones(len(ii), dtype=torch.float64))
        return total / count[:, None]

    def __call__(self, pairs, masks) -> Tensor:
        return self.per_draw(pairs, masks).mean(-1)



def rank_correlation(x, y) -> float:
    """Spearman rank correlation of two 1-D sequences (``scipy.stats.spearmanr``: average ranks for ties; NaN if
    one is constant)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"rank_correlation: need two sequences of the same length >= 2, got {x.size} and {y.size}")
    with warnings.catch_warnings():  # a constant sequence: NaN is the answer, not a warning
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def fitness_rank_correlation(cached: CachedFitness, exact: ExactFitness, population_size: int = 32,
                             num_pairs: int | None = None, same_class: str = "forced", seed: int = 0) -> dict:
    """Spearman correlation between cached and exact fitness over a random population.

    Returns ``{"spearman": float, "cached": (I,) ndarray, "exact": (I,) ndarray}``.
    """
    if num_pairs is None:
        num_pairs = default_num_pairs(cached.num_classes, same_class)
    pairs, masks = random_population(population_size, num_pairs, cached, same_class, seed)
    c = cached(pairs, masks).double().cpu().numpy()
    e = exact(pairs, masks).numpy()
    return {"spearman": rank_correlation(c, e), "cached": c, "exact": e}


__all__ = ["ExactFitness", "fitness_rank_correlation", "rank_correlation"]
