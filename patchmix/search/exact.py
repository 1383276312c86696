"""The exact fitness: ``f_T`` run on the composed validation images themselves (:class:`ExactFitness`), the
ground truth the cached tables approximate and the paper's own fitness, and the rank correlation a table is judged
by (:func:`rank_correlation`, :func:`fitness_rank_correlation`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import Tensor, nn

from .._optional import require
from .cache import draw_period
from .fitness import CachedFitness, random_population
from .pairs import default_num_pairs
from .scoring import composed_scores, model_device


class ExactFitness:
    """Fitness with real images: each draw ``(a, b)`` is composed with ``patchmix.ops.grid_mix`` and run
    through ``model`` (:func:`patchmix.search.scoring.composed_scores`); patch ``n`` is scored against its patch
    target with the fitness's objective, and the image-level term (when ``fitness.image_weight != 0``) scores
    the model's image logits against the soft label with the exact pixel ``lam``. The ground truth the cached
    tables approximate, and the paper's own fitness: the search can use it directly (``search.fitness = exact``,
    ``fitness_kind == "exact"``), at ``I * N * S`` forward passes per generation (split across the ranks under
    ``torchrun``).

    ``__call__(pairs (I, N), masks (I, N, P, P)) -> (I,)`` float64; :meth:`per_draw` keeps the draws apart.
    Cost: ``I * N_active * S`` forward passes.

    Args:
        model: ``f_T``; images: the cached validation set ``(V, C, H, W)``, float in ``[0, 1]`` or uint8.
        batch_size, precision: of the forward passes (:func:`patchmix.search.scoring.composed_scores`).
        fitness: gives the objective, the image weight, the pairs' classes and (by default) the draws.
        draws: int64 ``(Q, S, 2)`` draws to compose instead of ``fitness.draws``: independent draws
            (:func:`draw_pairs` with another seed) score a proxy on images it was not fitted on.
    """

    fitness_kind = "exact"

    def __init__(self, model: nn.Module, images: Tensor, fitness: CachedFitness, *, draws: Tensor | None = None,
                 batch_size: int = 256, device=None, precision: str = "float32"):
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
        self.precision = precision
        self.period = draw_period(draws)  # (Q,): draw s of pair q composes as draw s % period[q]
        #: composed images scored by f_T so far (what the calls cost)
        self.forward_passes = 0

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

    def per_draw(self, pairs, masks, progress=None) -> Tensor:
        """``(I, S)`` float64: per individual and draw, the mean over its active slots of the composed sample's
        score (NaN for an individual without an active slot).

        Each distinct composition is scored once: a slot ``(pair, mask)`` that several individuals hold, and a
        draw that repeats an earlier one of its pair (:func:`patchmix.search.cache.draw_period`), reuse the same
        forward pass, so the cost is ``sum over distinct slots of period[pair]`` forward passes. ``progress``: a
        callable ``(total=, desc=, unit=)`` returning a tqdm-like bar over those compositions."""
        pairs = torch.as_tensor(pairs).cpu()
        masks = torch.as_tensor(masks).cpu()
        n_ind, P = masks.shape[0], masks.shape[-1]
        f, S = self.fitness, self.num_draws
        ii, kk = torch.nonzero(pairs >= 0, as_tuple=True)
        q = pairs[ii, kk]
        key = torch.cat([q[:, None], masks[ii, kk].reshape(len(q), -1).long()], 1)  # (slots, 1 + P*P)
        uniq, inv = torch.unique(key, dim=0, return_inverse=True)
        uq, um = uniq[:, 0], uniq[:, 1:].bool().reshape(-1, P, P)
        period = self.period[uq]  # (U,)
        offset = torch.cumsum(period, 0) - period  # first row of each distinct slot
        slot = torch.repeat_interleave(torch.arange(len(uq)), period)  # (rows,)
        col = torch.arange(len(slot)) - offset[slot]  # its draw, < period
        bar = progress(total=len(slot), desc="search check", unit="img") if progress is not None else None
        try:
            scores, image = composed_scores(
                self.model, self.images, self.draws[uq[slot], col, 0], self.draws[uq[slot], col, 1], um[slot],
                f.classes[uq[slot], 0], f.classes[uq[slot], 1], objective=f.objective,
                image_term=f.image_weight != 0.0, batch_size=self.batch_size, device=self.device,
                precision=self.precision, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        self.forward_passes += len(slot)
        per_sample = scores.mean(-1)
        if image is not None:
            per_sample = per_sample + f.image_weight * image
        values = per_sample[offset[:, None] + torch.arange(S)[None, :] % period[:, None]]  # (U, S)
        total = torch.zeros(n_ind, S, dtype=torch.float64).index_add_(0, ii, values[inv])
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
        spearmanr = require("scipy.stats", "search", "the search check's rank correlation").spearmanr
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
