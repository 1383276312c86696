"""The interaction-aware cached fitness: a per-pair model of each cell's score on a *composed* image, in which
the score depends on which other cells come from the other image.

Why. A cell of a composed image is not scored as it would be on its unmixed source: ``f_T``'s patch logits see
the neighbouring cells, so the score of a cell falls as more of the grid comes from the other image, and by how
much depends on the pair of classes and on where the other cells lie. A linear cache (each cell scored on its
unmixed source) cannot see this; minimising it lets every cell take its harder source on its own, which gives
nearly uniform masks, which ``f_T`` finds *easy* (docs/search.md has the measurements).

The model. For class pair ``q``, cell ``n`` and side ``s`` (1: the cell comes from the pair's first class, mask
True; 0: from the second), the expected score of cell ``n`` over the pair's draws is

    ``score(n) = T[q, n, s, n] + sum_{m != n} T[q, n, s, m] * [cell m comes from the other side]``

an intercept (the cell on an otherwise unmixed image) plus one coefficient per other cell. This is the
``(Q, P*P, 2, P*P)`` table ``patchmix.ops.population_fitness`` scores, so a generation still costs one op call
(``I * N * P^4`` multiply-adds: 2.6e6 at CIFAR-10 scale). Every second-order model of the mask (neighbour
counts, distances, ...) is a special case of it.

The fit. For each pair, ``f_T`` scores ``S * M`` compositions: each of the search's ``S`` draws composed with
``M`` random masks (:func:`sample_masks`). For each ``(q, n, s)`` the cells with that side give one ridge
regression (intercept not penalised) of the cell's score on the ``P*P - 1`` indicators; all of them are solved
as one batch of ``(P*P) x (P*P)`` systems (:func:`fit_interactions`).

Cost: ``Q * S * M`` forward passes of ``f_T`` (55 * 32 * 64 = 113k at K = 10; docs/search.md gives the figures
at K = 100 and the ImageNet-scale plan), fewer where a class pair offers fewer than ``S`` distinct image pairs
(each is composed once, :func:`build_interaction_table`), plus ``Q * 2 * P^2`` solves. Built once per search, in chunks of pairs
(memory ``chunk * S * M * P^2`` scores).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .._optional import require
from ..choices import MASK_DISTRIBUTIONS
from .cache import CachedLogits, draw_pairs, draw_period
from .fitness import CachedFitness
from .pairs import pair_classes
from .scoring import composed_scores


def sample_masks(generator: torch.Generator, count: int, grid_size: int, distribution: str = "half") -> Tensor:
    """``count`` random masks ``(count, P, P)`` bool drawn from ``generator``: ``half``, every cell from either
    image with probability 1/2 (as the search's initial masks), or ``spread``, a fill ``p ~ U(0, 1)`` per mask and
    then every cell with probability ``p`` (nearly uniform masks, where a search may end, are seen too)."""
    if distribution not in MASK_DISTRIBUTIONS:
        raise ValueError(f"sample_masks: distribution must be one of {MASK_DISTRIBUTIONS}, got {distribution!r}")
    u = torch.rand(count, grid_size, grid_size, generator=generator, dtype=torch.float64)
    if distribution == "half":
        return u < 0.5
    p = torch.rand(count, 1, 1, generator=generator, dtype=torch.float64)
    return u < p


def fit_interactions(masks: Tensor, scores: Tensor, ridge: float) -> Tensor:
    """Ridge fit of the interaction model (module docstring) for a batch of pairs.

    Args:
        masks: bool ``(B, R, P*P)``: the ``R`` compositions of each of ``B`` pairs (True: cell from the first class).
        scores: ``(B, R, P*P)`` the cells' scores on those compositions.
        ridge: the penalty on the non-intercept coefficients (the intercept is not penalised), in units of
            squared score per coefficient: with ``R / 2`` rows per regression its weight is ``ridge / (R / 2)``
            of the data's.

    Returns:
        ``(B, P*P, 2, P*P)`` float64: ``[b, n, s, n]`` the intercept, ``[b, n, s, m]`` the coefficient of "cell
        ``m`` from the other side than cell ``n``". A ``(n, s)`` with no row (the cell never took side ``s``)
        gets zeros.
    """
    if masks.dim() != 3 or masks.dtype != torch.bool or scores.shape != masks.shape:
        raise ValueError(f"fit_interactions: masks must be bool (B, R, P*P) and scores of the same shape, got "
                         f"{masks.dtype} {tuple(masks.shape)} and {tuple(scores.shape)}")
    if not ridge > 0:
        raise ValueError(f"fit_interactions: ridge must be > 0, got {ridge}")
    B, R, PP = masks.shape
    y = scores.double()
    eye = torch.eye(PP, dtype=torch.float64)
    out = torch.empty(B, PP, 2, PP, dtype=torch.float64)
    for side in (0, 1):
        x = masks if side == 1 else ~masks
        w = x.double()  # (B, R, PP): rows where cell n takes this side
        z = (~x).double()  # (B, R, PP): cell m from the other side
        # Gram of [z with column n set to 1] over the rows of cell n: z z^T + e_n a^T + a e_n^T + c e_n e_n^T
        gram = torch.einsum("brn,bri,brj->bnij", w, z, z)  # (B, PP, PP, PP)
        a = torch.einsum("brn,bri->bni", w, z)  # (B, PP, PP): a[b, n] = sum_r w z_r (a[b, n, n] = 0)
        c = w.sum(1)  # (B, PP)
        ea = torch.einsum("in,bnj->bnij", eye, a)  # e_n a^T
        gram += ea + ea.transpose(-1, -2) + torch.einsum("in,jn,bn->bnij", eye, eye, c)
        wy = w * y
        rhs = torch.einsum("brn,bri->bni", wy, z)  # (B, PP, PP)
        rhs += torch.einsum("in,bn->bni", eye, wy.sum(1))
        penalty = ridge * (1.0 - eye)  # (PP, PP): row n has no penalty at its intercept n
        gram = gram + torch.diag_embed(penalty)[None]
        # a side the cell never took: intercept 0 rather than a singular system
        gram += torch.einsum("in,jn,bn->bnij", eye, eye, (c == 0).double())
        out[:, :, side, :] = torch.linalg.solve(gram, rhs[..., None])[..., 0]
    return out


def _pair_generator(seed: int, q: int) -> torch.Generator:
    """The masks of pair ``q`` depend on ``(seed, q)`` only: building in chunks of any size gives the same table."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, q]).generate_state(1)[0]))


def score_compositions(model: nn.Module, images: Tensor, draws: Tensor, classes: Tensor, grid_size: int,
                       pairs, *, objective: str = "logprob", masks_per_draw: int = 64,
                       distribution: str = "half", seed: int = 0, batch_size: int = 512,
                       device=None, precision: str = "float32", progress=None) -> tuple[Tensor, Tensor]:
    """What the fit learns from: ``f_T``'s cell scores on the compositions of ``pairs`` (pair ids: a range or an
    int64 sequence).

    Pair ``q``'s ``R = S * M`` compositions are its ``S = draws.shape[1]`` draws, each with ``M`` masks
    (:func:`sample_masks` from a generator seeded by ``(seed, q)``: the same whatever ``pairs`` it is built with);
    composition ``s * M + j`` is draw ``s`` with its ``j``-th mask. Returns ``bits (B, R, P*P)`` bool (True: the
    cell from the pair's first class) and ``scores (B, R, P*P)`` float64, ``B = len(pairs)``. ``precision``: of the
    forward passes (:func:`patchmix.search.scoring.composed_scores`).
    """
    S, M, P = draws.shape[1], int(masks_per_draw), grid_size
    R = S * M
    idx = torch.as_tensor(list(pairs), dtype=torch.int64)
    masks = torch.stack([sample_masks(_pair_generator(seed, int(q)), R, P, distribution) for q in idx])  # (B,R,P,P)
    d = draws[idx]  # (B, S, 2)
    c = classes[idx]
    scores, _ = composed_scores(model, images, d[..., 0].repeat_interleave(M, 1).reshape(-1),
                                d[..., 1].repeat_interleave(M, 1).reshape(-1), masks.reshape(-1, P, P),
                                c[:, 0].repeat_interleave(R), c[:, 1].repeat_interleave(R), objective=objective,
                                batch_size=batch_size, device=device, precision=precision, progress=progress)
    return masks.reshape(len(idx), R, P * P), scores.reshape(len(idx), R, P * P)


def build_interaction_table(model: nn.Module, images: Tensor, draws: Tensor, classes: Tensor, grid_size: int, *,
                            objective: str = "logprob", masks_per_draw: int = 64, ridge: float = 10.0,
                            distribution: str = "half", seed: int = 0, batch_size: int = 512,
                            pairs_per_chunk: int | None = None, device=None, pair_range: tuple[int, int] | None = None,
                            precision: str = "float32", progress: bool | Callable = False) -> tuple[Tensor, dict]:
    """Fit the interaction table of every pair on ``f_T``'s scores of composed validation images
    (:func:`score_compositions`, then :func:`fit_interactions`), a chunk of pairs at a time.

    A pair is fitted on its distinct draws only: when its draws repeat with period ``p``
    (:func:`patchmix.search.cache.draw_period`; :func:`patchmix.search.cache.draw_pairs` cycles through the
    image pairs of a class pair that offers no more than ``S``), its ``p * M`` compositions are the first ``p``
    draws with ``M`` masks each. So a small validation split costs what it can teach: ``sum_q min(S, D_q) * M``
    forward passes.

    Args:
        model: ``f_T`` (returns ``(image_logits, patch_logits)``); images: ``(V, C, H, W)`` float in ``[0, 1]``
            or uint8 (composed where they lie: put them on the model's device to compose there).
        draws: int64 ``(Q, S, 2)`` the search's validation pairs; classes: int64 ``(Q, 2)`` each pair's classes.
        masks_per_draw: ``M``, random masks per draw (:func:`sample_masks` with ``distribution``).
        ridge: see :func:`fit_interactions`.
        seed: the masks' seed (with the pair id).
        batch_size: compositions per forward pass; pairs_per_chunk: pairs composed and fitted together
            (default: enough for about 8192 compositions).
        pair_range: ``(lo, hi)``: build only pairs ``lo .. hi - 1`` (a DDP rank's share; the masks depend on the
            pair, not on the range, so the shares concatenate to the whole table).
        precision: of the forward passes (:data:`patchmix.search.scoring.PRECISIONS`).
        progress: True for a tqdm bar over the compositions, or a callable ``(total=, desc=, unit=)`` returning
            one (e.g. :meth:`patchmix.training.Log.progress`).

    Returns:
        ``table (hi - lo, P*P, 2, P*P)`` float64 (``(Q, ...)`` for all pairs) and ``{"forward_passes", "seconds",
        "r2"}``: ``r2`` is the in-sample share of the cells' score variance (around each ``(pair, cell, side)``
        mean) that the model explains.
    """
    if masks_per_draw < 1:
        raise ValueError(f"build_interaction_table: masks_per_draw must be >= 1, got {masks_per_draw}")
    PP, M = grid_size * grid_size, int(masks_per_draw)
    first, last = pair_range if pair_range is not None else (0, draws.shape[0])
    period = draw_period(draws[first:last])  # (hi - lo,)
    table = torch.empty(last - first, PP, 2, PP, dtype=torch.float64)
    total = int(period.sum()) * M
    t0 = time.perf_counter()
    ss_res = ss_tot = 0.0
    make_bar = progress if callable(progress) else (
        lambda **kw: require("tqdm", "search", "build_interaction_table's progress bar").tqdm(
            disable=not progress, leave=False, **kw))
    bar = make_bar(total=total, desc="interaction fit", unit="img")
    for p in period.unique().tolist():  # pairs with the same count of distinct draws are fitted together
        group = torch.nonzero(period == p)[:, 0] + first
        chunk = pairs_per_chunk or max(1, 8192 // (p * M))
        for lo in range(0, len(group), chunk):
            qs = group[lo:lo + chunk]
            bits, y = score_compositions(model, images, draws[:, :p], classes, grid_size, qs, objective=objective,
                                         masks_per_draw=M, distribution=distribution, seed=seed,
                                         batch_size=batch_size, device=device, precision=precision, progress=bar)
            t = fit_interactions(bits, y, ridge)
            table[qs - first] = t
            res, tot = _residuals(t, bits, y)
            ss_res, ss_tot = ss_res + res, ss_tot + tot
    bar.close()
    stats = {"forward_passes": total, "seconds": round(time.perf_counter() - t0, 3),
             "r2": float(1.0 - ss_res / ss_tot) if ss_tot > 0 else None}
    return table, stats


def predict_cells(table: Tensor, bits: Tensor) -> Tensor:
    """The model's cell scores: ``table (B, PP, 2, PP)``, ``bits (B, R, PP)`` bool -> ``(B, R, PP)`` float64."""
    t = table.double()
    side = bits.long()  # (B, R, PP)
    rows = t[torch.arange(t.shape[0])[:, None, None], torch.arange(t.shape[1])[None, None, :], side]  # (B, R, PP, PP)
    other = (bits[:, :, None, :] != bits[:, :, :, None]).double()  # (B, R, n, m): m from the other side than n
    diag = rows.diagonal(dim1=-2, dim2=-1)  # (B, R, PP)
    return diag + (rows * other).sum(-1)


def _residuals(table: Tensor, bits: Tensor, y: Tensor) -> tuple[float, float]:
    """Residual and total sums of squares of the fit (total around each (pair, cell, side) mean)."""
    pred = predict_cells(table, bits)
    res = float(((y - pred) ** 2).sum())
    tot = 0.0
    for side in (True, False):
        w = (bits == side).double()
        n = w.sum(1).clamp_min(1)
        mean = (w * y).sum(1) / n
        tot += float((w * (y - mean[:, None]) ** 2).sum())
    return res, tot


def interaction_fitness(cache: CachedLogits, model: nn.Module, images: Tensor, *, num_draws: int = 32,
                        masks_per_draw: int = 64, ridge: float = 10.0, distribution: str = "half",
                        objective: str = "logprob", image_weight: float = 0.0, seed: int = 0,
                        batch_size: int = 512, device=None, fitness_device="cpu", precision: str = "float32",
                        progress: bool = False) -> CachedFitness:
    """A :class:`CachedFitness` with the interaction table fitted on ``model`` (``f_T``) over the search's draws.

    ``cache``: ``f_T``'s cached logits over ``images`` (the same validation set, same order): its labels fix the
    draws (``num_draws``, ``seed``, exactly as :class:`CachedFitness` draws them) and its logits serve the
    image-level term. ``fitness_device``: where the op scores populations. The build's statistics are in
    ``fitness.build``.
    """
    if images.dim() != 4 or images.shape[0] != cache.num_images:
        raise ValueError(f"interaction_fitness: images must be the cached validation set (V, C, H, W) with V = "
                         f"{cache.num_images}, got {tuple(images.shape)}")
    draws = draw_pairs(cache.labels, cache.num_classes, num_draws, seed)
    table, stats = build_interaction_table(
        model, images, draws, pair_classes(cache.num_classes), cache.grid_size, objective=objective,
        masks_per_draw=masks_per_draw, ridge=ridge, distribution=distribution, seed=seed, batch_size=batch_size,
        device=device, precision=precision, progress=progress)
    fitness = CachedFitness(cache, num_draws=num_draws, objective=objective, image_weight=image_weight, seed=seed,
                            device=fitness_device, table=table)
    fitness.build = dict(stats, masks_per_draw=masks_per_draw, ridge=ridge, distribution=distribution)
    return fitness


__all__ = ["build_interaction_table", "fit_interactions", "interaction_fitness", "predict_cells", "sample_masks",
           "score_compositions"]
