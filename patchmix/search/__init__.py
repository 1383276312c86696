"""Guided PatchMix search (paper section 2.3): a DEAP genetic search over class pairs and grid masks,
scored on cached validation logits by the batched op ``patchmix.ops.population_fitness``.

Typical use::

    cache = CachedLogits.from_model(model, val_images, val_labels)          # one pass, (V, P*P, K) logits
    fitness = CachedFitness(cache, num_draws=32)                            # draws fixed once, seeded
    result = search(fitness, population=500, generations=250, seed=0, checkpoint="search.npz", resume=True)
    result.policy.save("policy.json")                                       # -> patchmix.GuidedPatchMix

Modules: :mod:`.pairs` (pair ids, slot pools, the default ``N``), :mod:`.settings` (:class:`SearchConfig`,
the one vocabulary of search settings), :mod:`.fitness` (the cache, cached and exact fitness, the closed-form
optimum), :mod:`.fidelity` (how faithful the cache is: cached against exact fitness), :mod:`.genetic` (the DEAP
search) and :mod:`.policy` (its result as JSON).

The DEAP search is imported on first use of one of its names (``search``, ``GeneticSearch``, ...), so that
``import patchmix`` does not import DEAP.
"""

import importlib

from .fidelity import cache_fidelity
from .fitness import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    OptimumResult,
    fitness_rank_correlation,
    random_population,
    rank_correlation,
    synthetic_cache,
)
from .pairs import pair_classes, pair_id
from .policy import Policy, PolicyError
from .settings import MUTATIONS, PAPER_OPERATORS, SearchConfig

_GENETIC = ("GeneticSearch", "SearchResult", "search")


def __getattr__(name: str):
    if name in _GENETIC:
        return getattr(importlib.import_module(".genetic", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MUTATIONS",
    "PAPER_OPERATORS",
    "CachedFitness",
    "CachedLogits",
    "ExactFitness",
    "GeneticSearch",
    "OptimumResult",
    "Policy",
    "PolicyError",
    "SearchConfig",
    "SearchResult",
    "cache_fidelity",
    "fitness_rank_correlation",
    "pair_classes",
    "pair_id",
    "random_population",
    "rank_correlation",
    "search",
    "synthetic_cache",
]
