"""What a search returns (:class:`SearchResult`, from the genetic search and the exhaustive solver alike) and what
both solvers check before they run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .fitness import CachedFitness
from .policy import Policy
from .settings import SearchConfig


@dataclass
class SearchResult:
    """``policy``: the best individual as a :class:`Policy`; ``logbook``: one dict per generation
    (``gen, nevals, best, mean, worst, entered, left``; pairs as ``[c_i, c_j]`` class indices);
    ``generations``: generations run (without generation 0); ``stopped_early``; ``evaluations``; timings in s;
    ``population``: the final population as ``pairs (I, N)`` int64, ``masks (I, N, P, P)`` bool and fitness
    ``values (I,)`` float64 arrays; ``offspring``: the last generation's scored offspring, the same way (what
    the final selection ranked: a converged population may hold one policy many times, its offspring are the
    variants around it). Both serve to check the cached fitness against the exact one where it matters."""

    policy: Policy
    best_pairs: np.ndarray
    best_masks: np.ndarray
    best_fitness: float
    logbook: list[dict]
    generations: int
    stopped_early: bool
    evaluations: int
    time_total: float = 0.0
    time_fitness: float = 0.0
    extra: dict = field(default_factory=dict)
    population: dict[str, np.ndarray] = field(default_factory=dict)
    offspring: dict[str, np.ndarray] = field(default_factory=dict)


def population_arrays(individuals: list) -> dict[str, np.ndarray]:
    """``{"pairs" (I, N), "masks" (I, N, P, P), "values" (I,)}`` of scored individuals (empty dict for none)."""
    if not individuals:
        return {}
    return {"pairs": np.stack([ind.pairs for ind in individuals]),
            "masks": np.stack([ind.masks for ind in individuals]),
            "values": np.array([ind.fitness.values[0] for ind in individuals], dtype=np.float64)}


def check_fitness_settings(fitness: CachedFitness, config: SearchConfig) -> None:
    """The fitness settings of ``config`` are those the fitness object was built with."""
    for name, built in (("objective", fitness.objective), ("num_draws", fitness.num_draws),
                        ("fitness", fitness.fitness_kind)):
        if getattr(config, name) != built:
            raise ConfigError(f"search.{name} = {getattr(config, name)!r} but the fitness was built with {built!r}")


__all__ = ["SearchResult", "check_fitness_settings", "population_arrays"]
