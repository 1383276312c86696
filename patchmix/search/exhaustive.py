"""The exhaustive solver (``search.solver = exhaustive``): the exact optimum of the patch-only fitness, where the
genetic search (:mod:`.genetic`) approximates it. No DEAP."""

from __future__ import annotations

import time

from ..errors import ConfigError
from .fitness import CachedFitness
from .policy import Policy
from .result import SearchResult, check_fitness_settings
from .settings import SearchConfig


def exhaustive_search(fitness: CachedFitness, config: SearchConfig, *, seed: int = 0,
                      class_names: list[str] | None = None) -> SearchResult:
    """The optimum of the patch-only fitness (``solver = exhaustive``): per pair the best mask
    (:meth:`CachedFitness.best_masks`: closed form for a linear table, all ``2^(P*P)`` masks scored on the op for an
    interaction table, ``P <= 4``), then the best pairs for the ``N`` slots (:meth:`CachedFitness.optimum`). Exact
    where the GA approximates; needs ``image_weight = 0`` (the image term is not separable into cells). The result
    has no logbook and no population (``generations = 0``)."""
    config.validate(fitness.num_classes)
    check_fitness_settings(fitness, config)
    t0 = time.perf_counter()
    N = config.resolved_pairs(fitness.num_classes)
    try:
        opt = fitness.optimum(N, config.same_class, config.direction)
    except ValueError as exc:
        raise ConfigError(f"search.solver = exhaustive: {exc}") from None
    seconds = time.perf_counter() - t0
    K = fitness.num_classes
    names = list(class_names or fitness.cache.class_names or [str(k) for k in range(K)])
    cls = fitness.classes.numpy()
    evaluations = fitness.num_pairs * (2 ** (fitness.grid_size ** 2) if fitness.fitness_kind == "interaction" else 2)
    meta = {"objective": fitness.objective, "direction": config.direction, "image_weight": fitness.image_weight,
            "num_draws": fitness.num_draws, "draw_seed": fitness.seed, "same_class": config.same_class,
            "num_pairs": N, "fitness": fitness.fitness_kind, "solver": "exhaustive"}
    policy = Policy(cls[opt.pairs], opt.masks.copy(), names, fitness.grid_size, opt.fitness, seed, search=meta)
    return SearchResult(policy, opt.pairs.copy(), opt.masks.copy(), float(opt.fitness), [], 0, False, evaluations,
                        seconds, seconds)


__all__ = ["exhaustive_search"]
