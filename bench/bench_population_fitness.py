"""``population_fitness``: the batched fitness op beside its eager reference, and the guided search it serves
(generations/s and evaluations/s of the DEAP search on a synthetic cache).

Workloads: CIFAR-10 scale (``K = 10``, ``N = 20``) and CIFAR-100 scale (``K = 100``, ``N = 200``),
population 500, ``S = 32`` draws per pair, ``P = 4``, same-class pairs forced, float64 table. ``extra_info``:
``generations_per_s``, ``evaluations_per_s``, ``kernel_share`` (fraction of the search time spent inside
``patchmix.ops.population_fitness``), ``kernel_ms_per_generation``. Target on the 2-core CPU: the full
250-generation CIFAR-100-scale search in at most 60 s (``test_full_search_cifar100``, one round).

Under ``--benchmark-disable`` (CI) every search runs 2 generations once, so the file finishes in seconds.
"""

import pytest
import torch

from patchmix.ops import population_fitness, population_fitness_reference
from patchmix.search import CachedFitness, search, synthetic_cache

SCALES = {"cifar10": (10, 20), "cifar100": (100, 200)}  # classes, N active pairs
POPULATION, DRAWS, GRID = 500, 32, 4
_fitness = {}


def fitness_for(scale: str) -> CachedFitness:
    if scale not in _fitness:
        K, _ = SCALES[scale]
        cache = synthetic_cache(K, per_class=100, grid_size=GRID, seed=0)  # V = 100 K validation images
        _fitness[scale] = CachedFitness(cache, num_draws=DRAWS, seed=0)
    return _fitness[scale]


def _run_search(benchmark, scale, generations, rounds):
    K, N = SCALES[scale]
    f = fitness_for(scale)
    results = []

    def run():
        results.append(search(f, population=POPULATION, generations=generations, num_pairs=N, seed=0,
                              patience=None, progress=False))

    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    r = min(results, key=lambda r: r.time_total)
    benchmark.extra_info.update({
        "classes": K, "num_pairs": N, "population": POPULATION, "draws": DRAWS, "generations": r.generations,
        "seconds": r.time_total,
        "generations_per_s": r.generations / r.time_total,
        "evaluations_per_s": r.evaluations / r.time_total,
        "kernel_share": r.time_fitness / r.time_total,
        "kernel_ms_per_generation": 1e3 * r.time_fitness / (r.generations + 1),
        "best_fitness": r.best_fitness,
    })
    return r


@pytest.mark.parametrize("scale", list(SCALES))
def test_search_throughput(benchmark, scale):
    generations = 2 if benchmark.disabled else 25
    _run_search(benchmark, scale, generations, rounds=1 if benchmark.disabled else 3)


def test_full_search_cifar100(benchmark):
    """The paper's full setting at CIFAR-100 scale: 250 generations (one round); target <= 60 s."""
    generations = 2 if benchmark.disabled else 250
    r = _run_search(benchmark, "cifar100", generations, rounds=1)
    if not benchmark.disabled:
        opt = fitness_for("cifar100").optimum(SCALES["cifar100"][1])
        benchmark.extra_info["optimum"] = opt.fitness
        benchmark.extra_info["gap_to_optimum"] = (r.best_fitness - opt.fitness) / abs(opt.fitness)


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("provider", ["patchmix", "eager"])
def test_population_fitness_op(benchmark, provider, scale):
    """One generation's scoring: the whole population (500 x N slots) in one call."""
    K, N = SCALES[scale]
    f = fitness_for(scale)
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, f.num_pairs, (POPULATION, N), generator=g)
    masks = torch.rand(POPULATION, N, GRID, GRID, generator=g) < 0.5
    if provider == "patchmix":
        fn = lambda: population_fitness(f.table, pairs, masks)  # noqa: E731
    else:
        fn = lambda: population_fitness_reference(f.table, pairs, masks, None, None, None, 0.0)  # noqa: E731
    benchmark.group = f"population_fitness-{scale}"
    benchmark(fn)
    benchmark.extra_info["lookups"] = POPULATION * N * GRID * GRID
