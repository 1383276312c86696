"""How faithful the cached fitness is: the Spearman rank correlation between the cached fitness (per-patch
logits of the unmixed validation images, a linear approximation) and :class:`ExactFitness` (``f_T`` run on
the composed validation images), over a random population and over the search's final population.

The random population asks whether the cache ranks arbitrary policies as ``f_T`` would; the final population
asks the question where it matters, among the policies the search converged to: the distinct policies of the
last population and of the offspring its last selection ranked (a converged population may hold one policy
500 times; its offspring are the variants the search was choosing between). Both use their own small
set of draws (``num_draws`` validation pairs per class pair, the same for the cached and the exact side), so
the check costs ``individuals * N * num_draws`` forward passes per population: about 10,000 composed images
for 32 individuals of 20 pairs with 8 draws (the digits demo: well under a second; mnist5k's small ResNet on
2 cores: a few seconds).

Reading it (``GOAL``): at 0.8 or more the cache orders policies like ``f_T`` does, so the search's minimum is
close to the policy ``f_T`` finds hardest. Below it the search optimises the linear proxy more than the
model: the policy's pairs and masks are the hardest for the cached per-patch predictions, which ignore the
other image's context; treat the guided policy then as "hard for the proxy", and compare it with Random
PatchMix before trusting the search's ordering.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .fitness import CachedFitness, CachedLogits, ExactFitness, random_population, rank_correlation

#: The Spearman correlation above which the cache is taken to rank policies as ``f_T`` does.
GOAL = 0.8


def unique_individuals(pairs: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct policies among ``pairs (I, N)``, ``masks (I, N, P, P)`` (slot order ignored), in first-seen
    order."""
    order = np.argsort(pairs, axis=1, kind="stable")
    p = np.take_along_axis(pairs, order, 1)
    m = np.take_along_axis(masks, order[:, :, None, None], 1)
    keys = [pi.tobytes() + mi.tobytes() for pi, mi in zip(p, m, strict=True)]
    first = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    return pairs[first], masks[first]


def _compare(cached: CachedFitness, exact: ExactFitness, pairs, masks) -> dict:
    pairs, masks = torch.as_tensor(pairs), torch.as_tensor(masks)
    c = cached(pairs, masks).double().cpu().numpy()
    e = exact(pairs, masks).numpy()
    rho = rank_correlation(c, e) if len(c) >= 3 else float("nan")
    return {"spearman": None if math.isnan(rho) else rho, "n": int(len(c)), "cached": c.tolist(), "exact": e.tolist()}


def cache_fidelity(cache: CachedLogits, model: nn.Module, images: Tensor, *, num_pairs: int,
                   final: list[dict] | None = None, same_class: str = "forced", objective: str = "logprob",
                   num_draws: int = 8, individuals: int = 32, seed: int = 0, batch_size: int = 256) -> dict:
    """Spearman(cached, exact) over ``individuals`` random policies and as many distinct policies of the final
    population (``final``: e.g. ``[SearchResult.population, SearchResult.offspring]``, each ``{"pairs", "masks",
    ...}``).

    Args:
        cache: ``f_T``'s cached validation logits; ``images``: the same validation images, float ``(V, C, H, W)``
            in ``[0, 1]`` on the CPU (composed with ``grid_mix``, run through ``model`` in batches).
        num_pairs, same_class, objective: the search's settings (the random policies are built like its own).
        num_draws: validation pairs per class pair for this check (its own draws, fixed by ``seed``).

    Returns ``{"draws", "goal", "random": {...}, "final": {...} or None}``, each population as
    ``{"spearman" (None when undefined), "n", "cached", "exact"}``.
    """
    cached = CachedFitness(cache, num_draws=num_draws, objective=objective, seed=seed)
    exact = ExactFitness(model, images, cached, batch_size=batch_size)
    out = {"draws": num_draws, "goal": GOAL}
    pairs, masks = random_population(individuals, num_pairs, cached, same_class, seed)
    out["random"] = _compare(cached, exact, pairs, masks)
    out["final"] = None
    parts = [f for f in final or [] if len(f.get("pairs", ()))]
    if parts:
        p, m = unique_individuals(np.concatenate([f["pairs"] for f in parts]),
                                  np.concatenate([f["masks"] for f in parts]))
        if len(p) > individuals:  # an even sample of the distinct policies
            keep = np.linspace(0, len(p) - 1, individuals).round().astype(np.int64)
            p, m = p[keep], m[keep]
        out["final"] = _compare(cached, exact, p, m)
    return out


__all__ = ["GOAL", "cache_fidelity", "unique_individuals"]
