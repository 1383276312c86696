"""Guided PatchMix search (paper section 2.3): a DEAP genetic search over class pairs and grid masks,
scored on cached validation logits by the batched op ``patchmix.ops.population_fitness``.

Typical use::

    cache = CachedLogits.from_model(model, val_images, val_labels)          # one pass, (V, P*P, K) logits
    fitness = interaction_fitness(cache, model, val_images, num_draws=32)   # f_T on composed draws, fitted
    result = search(fitness, population=500, generations=250, seed=0, checkpoint="search.npz", resume=True)
    result.policy.save("policy.json")                                       # -> patchmix.GuidedPatchMix
    check = search_check(fitness, model, val_images, chosen=(result.best_pairs, result.best_masks),
                         num_pairs=20)                                      # fidelity and efficacy, measured

Modules: :mod:`.pairs` (pair ids, slot pools, the default ``N``), :mod:`.settings` (:class:`SearchConfig`,
the one vocabulary of search settings), :mod:`.scoring` (``f_T`` on composed images), :mod:`.cache` (the cache of
``f_T``'s logits and the validation draws), :mod:`.fitness` (the cached fitness and its tables, the per-pair
optimum), :mod:`.exact` (the exact fitness and the rank correlation), :mod:`.interaction` (the interaction-aware
table, fitted on ``f_T``), :mod:`.fidelity` (the search check: fidelity and efficacy against the exact fitness),
:mod:`.operators` (the individual and the variation operators, numpy), :mod:`.genetic` (the DEAP search and
``search``, the one call for either solver), :mod:`.checkpoint` (the search's checkpoint file), :mod:`.exhaustive`
(the exact solver), :mod:`.result` (:class:`SearchResult`, what both return), :mod:`.policy` (the chosen policy as
JSON) and :mod:`.synthetic` (stand-ins for tests and benchmarks: a synthetic cache and ``f_T``).

The DEAP search is imported on first use of one of its names (``search``, ``GeneticSearch``), so that
``import patchmix`` does not import DEAP.
"""

import importlib

from .cache import CachedLogits, draw_pairs
from .exact import ExactFitness
from .exhaustive import exhaustive_search
from .fidelity import search_check
from .fitness import CachedFitness, OptimumResult, random_population
from .interaction import build_interaction_table, interaction_fitness
from .pairs import pair_classes, pair_id
from .policy import Policy, PolicyError
from .result import SearchResult
from .settings import MUTATIONS, PAPER_OPERATORS, SearchConfig

_GENETIC = ("GeneticSearch", "search")


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
    "build_interaction_table",
    "draw_pairs",
    "exhaustive_search",
    "interaction_fitness",
    "pair_classes",
    "pair_id",
    "random_population",
    "search",
    "search_check",
]
