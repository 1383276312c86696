"""``population_fitness``: the batched fitness op beside its eager reference, and the guided search it serves
(generations/s and evaluations/s of the DEAP search on a synthetic cache).

Workloads: CIFAR-10 scale (``K = 10``, ``N = 20``) and CIFAR-100 scale (``K = 100``, ``N = 200``),
population 500, ``S = 32`` draws per pair, ``P = 4``, same-class pairs forced, float64 table. ``extra_info``:
``generations_per_s``, ``evaluations_per_s``, ``kernel_share`` (fraction of the search time spent inside
``patchmix.ops.population_fitness``), ``kernel_ms_per_generation``. Target on the 2-core CPU: the full
250-generation CIFAR-100-scale search in at most 60 s (``test_full_search_cifar100``, one round).

Interaction table ``(Q, P*P, 2, P*P)`` (synthetic, float64; ``P^2 * P^2 = 256`` multiply-adds per slot): one
generation's op call at both scales, the C++ kernel against the eager reference, and the exhaustive enumeration
a caller runs at CIFAR-10 scale: all ``2^16`` masks of the 4x4 grid for each of the ``Q = 55`` pairs (3.6M
slots, 9.2e8 multiply-adds) through the op in calls of ``ENUM_CHUNK`` pairs (``extra_info``: ``seconds``,
``multiply_adds_per_s``).

Under ``--benchmark-disable`` (CI) every search runs 2 generations once and the enumeration covers 2 pairs, so
the file finishes in seconds.
"""

import pytest
import torch

from patchmix.ops import population_fitness, population_fitness_reference
from patchmix.search import CachedFitness, search
from patchmix.search.synthetic import synthetic_cache

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


def _time_generation(benchmark, provider, table, N, group):
    """One generation's scoring with ``table``: a random population of 500 x N slots in one call."""
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, table.shape[0], (POPULATION, N), generator=g)
    masks = torch.rand(POPULATION, N, GRID, GRID, generator=g) < 0.5
    if provider == "patchmix":
        fn = lambda: population_fitness(table, pairs, masks)  # noqa: E731
    else:
        fn = lambda: population_fitness_reference(table, pairs, masks, None, None, None, 0.0)  # noqa: E731
    benchmark.group = group
    benchmark(fn)


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("provider", ["patchmix", "eager"])
def test_population_fitness_op(benchmark, provider, scale):
    """One generation's scoring: the whole population (500 x N slots) in one call."""
    _, N = SCALES[scale]
    _time_generation(benchmark, provider, fitness_for(scale).table, N, f"population_fitness-{scale}")
    benchmark.extra_info["lookups"] = POPULATION * N * GRID * GRID


def interaction_table(num_pairs: int) -> torch.Tensor:
    """A synthetic ``(Q, P*P, 2, P*P)`` float64 interaction table (the op's cost does not depend on its values)."""
    PP = GRID * GRID
    return torch.randn(num_pairs, PP, 2, PP, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def num_pairs_at(scale: str) -> int:
    K, _ = SCALES[scale]
    return K * (K + 1) // 2  # the class pairs i <= j, as CachedFitness counts them


@pytest.mark.parametrize("scale", list(SCALES))
@pytest.mark.parametrize("provider", ["patchmix", "eager"])
def test_population_fitness_interaction_op(benchmark, provider, scale):
    """One generation's scoring with the interaction table: 500 x N slots, 256 multiply-adds each."""
    _, N = SCALES[scale]
    table = interaction_table(num_pairs_at(scale))
    _time_generation(benchmark, provider, table, N, f"population_fitness-interaction-{scale}")
    benchmark.extra_info.update({"multiply_adds": POPULATION * N * GRID**4, "table_mb": table.nbytes / 2**20})


ENUM_CHUNK = 11  # pairs per call: 720,896 slots, 17 MB of inputs


def test_exhaustive_enumeration(benchmark):
    """Every mask of the 4x4 grid for every CIFAR-10-scale pair, through the op: pairs ``(65536 * ENUM_CHUNK, 1)``,
    masks ``(65536 * ENUM_CHUNK, 1, 4, 4)`` per call (the inputs are built once; a call adds the chunk's first
    pair id)."""
    Q = num_pairs_at("cifar10")
    table = interaction_table(Q)
    PP = GRID * GRID
    n_pairs = 2 if benchmark.disabled else Q
    chunk = min(ENUM_CHUNK, n_pairs)
    every = ((torch.arange(1 << PP)[:, None] >> torch.arange(PP)) & 1).bool().reshape(-1, 1, GRID, GRID)
    masks = every.repeat(chunk, 1, 1, 1)
    first = torch.arange(chunk).repeat_interleave(1 << PP)[:, None]
    scores = []

    def run():
        scores.clear()
        for q0 in range(0, n_pairs, chunk):
            rows = min(chunk, n_pairs - q0) << PP
            scores.append(population_fitness(table, first[:rows] + q0, masks[:rows]))

    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 3, iterations=1, warmup_rounds=0)
    assert sum(s.numel() for s in scores) == n_pairs << PP and not any(s.isnan().any() for s in scores)
    slots = n_pairs << PP
    benchmark.extra_info.update({"pairs": n_pairs, "slots": slots, "multiply_adds": slots * PP * PP})
    if not benchmark.disabled:
        seconds = benchmark.stats.stats.min
        benchmark.extra_info.update({"seconds": seconds, "multiply_adds_per_s": slots * PP * PP / seconds})
