"""Guided PatchMix search (paper section 2.3): a DEAP genetic search over class pairs and grid masks,
scored on cached validation logits by the batched op ``patchmix.ops.population_fitness``.

Typical use::

    cache = CachedLogits.from_model(model, val_images, val_labels)          # one pass, (V, P*P, K) logits
    fitness = CachedFitness(cache, num_draws=32)                            # draws fixed once, seeded
    result = search(fitness, population=500, generations=250, seed=0, checkpoint="search.ckpt", resume=True)
    result.policy.save("policy.json")                                       # -> patchmix.GuidedPatchMix
"""

from .fitness import (
    CachedFitness,
    CachedLogits,
    ExactFitness,
    OptimumResult,
    fitness_rank_correlation,
    pair_classes,
    pair_id,
    random_population,
    rank_correlation,
    synthetic_cache,
)
from .genetic import MUTATIONS, GeneticSearch, SearchConfig, SearchResult, search
from .policy import Policy, PolicyError

__all__ = [
    "MUTATIONS",
    "CachedFitness",
    "CachedLogits",
    "ExactFitness",
    "GeneticSearch",
    "OptimumResult",
    "Policy",
    "PolicyError",
    "SearchConfig",
    "SearchResult",
    "fitness_rank_correlation",
    "pair_classes",
    "pair_id",
    "random_population",
    "rank_correlation",
    "search",
    "synthetic_cache",
]
