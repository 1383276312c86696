"""The genetic search over class pairs and grid masks (paper section 2.3, 4.2), driven by DEAP; its individual and
operators are :mod:`.operators`, its checkpoint file :mod:`.checkpoint`, the exact alternative :mod:`.exhaustive`.

One generation (DEAP ``toolbox``): parents are chosen by tournament (``tools.selTournament``), varied by
``algorithms.varAnd`` (crossover with probability ``cxpb``, mutation with ``mutpb``) and the offspring
scored together by one call of ``patchmix.ops.population_fitness`` through the toolbox's ``map``. The next
population (``replacement``): ``plus`` (default) keeps the best ``population`` of parents and offspring
(``offspring_ratio * population`` offspring; DEAP's mu + lambda with truncation, offspring identical to
their parent dropped); ``generational`` (the paper's) keeps the ``elite`` best parents and
``population - elite`` offspring. ``tools.HallOfFame`` keeps the best individual ever seen;
``tools.Logbook`` records best/mean/worst fitness and the pairs entering or leaving the best individual.

Reproducibility: numpy ``Generator`` for the operators and a private copy of the ``random`` module state
for DEAP's selection and ``varAnd`` (swapped in around each generation, so the caller's global ``random``
state is untouched). Both are checkpointed with the population, so ``resume`` continues bit for bit.

DEAP's ``creator`` classes (the individuals with a minimising or maximising fitness) are created on first
use, not at import: importing :mod:`patchmix` neither imports DEAP nor touches its global ``creator``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict

import numpy as np
import torch

from .._optional import missing_extra, require
from .checkpoint import fitness_fingerprint, read_checkpoint, write_checkpoint
from .exhaustive import exhaustive_search
from .fitness import CachedFitness
from .operators import (
    Genome,
    PairNeighbours,
    clone,
    crossover,
    flip_heads,
    flip_tails,
    random_tails,
    transpose,
)
from .pairs import random_genome, slot_pools

try:
    from deap import algorithms, base, creator, tools
except ModuleNotFoundError as exc:
    raise missing_extra("deap", "search", "patchmix.search's genetic search") from exc
from .policy import Policy
from .result import SearchResult, check_fitness_settings, population_arrays
from .settings import MUTATIONS, SearchConfig


def individual_class(direction: str):
    """The DEAP individual class whose fitness is minimised (``"min"``) or maximised (``"max"``); the
    ``creator`` classes are made on the first call (``creator.create`` registers them process-wide)."""
    if not hasattr(creator, "PatchMixIndividualMin"):
        creator.create("PatchMixFitnessMin", base.Fitness, weights=(-1.0,))
        creator.create("PatchMixFitnessMax", base.Fitness, weights=(1.0,))
        creator.create("PatchMixIndividualMin", Genome, fitness=creator.PatchMixFitnessMin)
        creator.create("PatchMixIndividualMax", Genome, fitness=creator.PatchMixFitnessMax)
    return creator.PatchMixIndividualMin if direction == "min" else creator.PatchMixIndividualMax


class GeneticSearch:
    """The DEAP search; :func:`search` is the one-call interface. ``run()`` may be called once."""

    def __init__(self, fitness: CachedFitness, config: SearchConfig | None = None, *, seed: int = 0,
                 class_names: list[str] | None = None, checkpoint=None, resume: bool = False, progress: bool = True,
                 callback: Callable[[int, dict], bool | None] | None = None, save_checkpoint: bool = True):
        self.fitness = fitness
        self.config = config or SearchConfig(objective=fitness.objective, num_draws=fitness.num_draws,
                                             fitness=fitness.fitness_kind)
        K = fitness.num_classes
        self.config.validate(K)
        check_fitness_settings(fitness, self.config)
        self.seed = int(seed)
        self.class_names = list(class_names or fitness.cache.class_names or [str(k) for k in range(K)])
        if len(self.class_names) != K:
            raise ValueError(f"class_names has {len(self.class_names)} names for {K} classes")
        self.N = self.config.resolved_pairs(K)
        self.P = fitness.grid_size
        self.forced, self.optional = slot_pools(K, self.config.same_class)
        self.checkpoint = checkpoint
        self.save_checkpoint = save_checkpoint  # False: read on resume, never write (DDP ranks other than 0)
        self.resume = resume
        self.progress = progress
        self.callback = callback
        self.time_fitness = 0.0
        self.evaluations = 0
        self.last_offspring: list = []
        self.Individual = individual_class(self.config.direction)
        self.rng = np.random.default_rng([self.seed, 0x5EA7C4])
        self.py_state = random.Random(self.seed).getstate()
        self.toolbox = self._toolbox()

    # -- DEAP plumbing ------------------------------------------------------------------------------

    def _toolbox(self) -> base.Toolbox:
        c = self.config
        tb = base.Toolbox()
        nf = len(self.forced)
        weights = np.asarray(c.mutation_weights, dtype=np.float64)
        weights = weights / weights.sum()

        cumulative = np.cumsum(weights)
        neighbours = PairNeighbours(self.fitness.num_classes, self.optional) if c.heads_near > 0 else None

        def mutate(ind):
            op = MUTATIONS[min(int(np.searchsorted(cumulative, self.rng.random(), side="right")), 3)]
            if op == "flip_tails":
                return flip_tails(ind)
            if op == "transpose":
                return transpose(ind)
            if op == "flip_heads":
                return flip_heads(ind, self.rng, self.optional, nf, c.heads_indpb, c.heads_near, neighbours)
            return random_tails(ind, self.rng, c.tails_indpb)

        tb.register("individual", lambda: self.Individual(*random_genome(self.rng, self.forced, self.optional, self.N, self.P)))
        tb.register("population", tools.initRepeat, list, tb.individual)
        tb.register("clone", clone)
        tb.register("mate", crossover, rng=self.rng, num_forced=nf, cx_pairs=c.cx_pairs, kind=c.crossover,
                    scratch=np.zeros(self.fitness.num_pairs, np.int32))
        tb.register("mutate", mutate)
        tb.register("select", tools.selTournament, tournsize=c.tournament_size)
        tb.register("evaluate", lambda ind: self.evaluate([ind])[0])
        # DEAP calls map(evaluate, individuals); this one ignores `evaluate` and scores the whole list in one op call
        tb.register("map", lambda _evaluate, individuals: self.evaluate(list(individuals)))
        return tb

    def evaluate(self, individuals: list) -> list[tuple[float]]:
        """Fitness tuples of ``individuals``, in one ``population_fitness`` call."""
        if not individuals:
            return []
        pairs = torch.from_numpy(np.stack([ind.pairs for ind in individuals]))
        masks = torch.from_numpy(np.stack([ind.masks for ind in individuals]))
        t0 = time.perf_counter()
        values = self.fitness(pairs, masks).double().cpu().numpy()
        self.time_fitness += time.perf_counter() - t0
        self.evaluations += len(individuals)
        return [(float(v),) for v in values]

    def _evaluate_invalid(self, population: list) -> int:
        invalid = [ind for ind in population if not ind.fitness.valid]
        for ind, fit in zip(invalid, self.toolbox.map(self.toolbox.evaluate, invalid), strict=True):
            ind.fitness.values = fit
        return len(invalid)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.config.direction == "min" else a > b

    def _pairs_of(self, ind) -> set[int]:
        return set(ind.pairs.tolist())

    def _record(self, gen: int, nevals: int, population: list, prev_best: set[int] | None) -> dict:
        vals = np.array([ind.fitness.values[0] for ind in population])
        best_ind = self.hof[0]
        now = self._pairs_of(best_ind)
        cls = self.fitness.classes.numpy()
        entered = sorted(now - prev_best) if prev_best is not None else sorted(now)
        left = sorted(prev_best - now) if prev_best is not None else []
        best, worst = (vals.min(), vals.max()) if self.config.direction == "min" else (vals.max(), vals.min())
        rec = {"gen": gen, "nevals": nevals, "best": float(best), "mean": float(vals.mean()), "worst": float(worst),
               "best_ever": float(best_ind.fitness.values[0]),
               "entered": [cls[q].tolist() for q in entered], "left": [cls[q].tolist() for q in left]}
        self.logbook.record(**rec)
        return rec

    def _config_key(self) -> dict:
        """The settings a resumed search must share with its checkpoint (``generations``, ``patience`` and
        ``checkpoint_every`` may change), as JSON reads them back."""
        d = asdict(self.config)
        for name in ("generations", "patience", "checkpoint_every"):
            d.pop(name)
        d["seed"] = self.seed
        return json.loads(json.dumps(d))

    def _save(self, gen: int, population: list, state: dict) -> None:
        if self.checkpoint is None or not self.save_checkpoint:
            return
        meta = {
            "config": self._config_key(),
            "fingerprint": self._fingerprint,
            "gen": gen,
            "logbook": list(self.logbook),
            "rng": self.rng.bit_generator.state,
            "py_state": self.py_state,
            "state": dict(state, prev_best=sorted(state["prev_best"])),
            "evaluations": self.evaluations,
        }
        write_checkpoint(self.checkpoint, meta, population, self.hof[0])

    def _load(self):
        arrays, meta = read_checkpoint(self.checkpoint, self._config_key(), self._fingerprint)
        population = []
        for p, m, v in zip(arrays["pairs"], arrays["masks"], arrays["values"], strict=True):
            ind = self.Individual(p.copy(), m.copy())
            ind.fitness.values = (float(v),)
            population.append(ind)
        best = self.Individual(arrays["hof_pairs"].copy(), arrays["hof_masks"].copy())
        best.fitness.values = (float(arrays["hof_value"]),)
        self.hof.insert(best)
        for rec in meta["logbook"]:
            self.logbook.record(**rec)
        self.rng.bit_generator.state = meta["rng"]
        version, internal, gauss = meta["py_state"]
        self.py_state = (version, tuple(internal), gauss)
        self.evaluations = meta["evaluations"]
        state = dict(meta["state"])
        state["prev_best"] = set(state["prev_best"])
        # an early stop is a decision of the old patience: with a larger patience (or none) the search goes on
        patience = self.config.patience
        state["stopped_early"] = patience is not None and state["stall"] >= patience
        return meta["gen"], population, state

    # -- main loop ---------------------------------------------------------------------------------

    def _generation(self, population: list) -> tuple[list, int]:
        """One generation: the next population and the number of offspring scored."""
        c = self.config
        offspring = self.toolbox.select(population, c.num_offspring)
        offspring = algorithms.varAnd(offspring, self.toolbox, c.cxpb, c.mutpb)
        if c.replacement == "generational":
            elites = [clone(ind) for ind in tools.selBest(population, c.elite)]
            nevals = self._evaluate_invalid(offspring)
            self.last_offspring = offspring
            return elites + offspring, nevals
        # plus: an offspring still valid was neither crossed nor mutated, a copy of its parent: dropped
        offspring = [ind for ind in offspring if not ind.fitness.valid]
        nevals = self._evaluate_invalid(offspring)
        self.last_offspring = offspring
        return tools.selBest(population + offspring, c.population), nevals

    def run(self) -> SearchResult:
        tqdm = require("tqdm", "search", "the genetic search's progress bar").tqdm

        c = self.config
        t_start = time.perf_counter()
        self._fingerprint = fitness_fingerprint(self.fitness) if self.checkpoint is not None else None
        self.hof = tools.HallOfFame(1)
        self.logbook = tools.Logbook()
        self.logbook.header = ["gen", "nevals", "best", "mean", "worst", "best_ever", "entered", "left"]
        saved_py = random.getstate()
        try:
            if self.resume and self.checkpoint is not None and os.path.exists(self.checkpoint):
                gen, population, state = self._load()
            else:
                random.setstate(self.py_state)
                population = self.toolbox.population(n=c.population)
                nevals = self._evaluate_invalid(population)
                self.hof.update(population)
                self.py_state = random.getstate()
                rec = self._record(0, nevals, population, None)
                gen = 0
                state = {"best": rec["best_ever"], "stall": 0, "stopped_early": False,
                         "prev_best": self._pairs_of(self.hof[0])}
                self._save(0, population, state)
            bar = tqdm(total=c.generations, initial=min(gen, c.generations), disable=None if self.progress else True,
                       desc="guided search", unit="gen")
            try:
                while gen < c.generations and not state["stopped_early"]:
                    gen += 1
                    random.setstate(self.py_state)
                    population, nevals = self._generation(population)
                    self.hof.update(population)
                    self.py_state = random.getstate()
                    rec = self._record(gen, nevals, population, state["prev_best"])
                    state["prev_best"] = self._pairs_of(self.hof[0])
                    if self._better(rec["best_ever"], state["best"]):
                        state["best"], state["stall"] = rec["best_ever"], 0
                    else:
                        state["stall"] += 1
                    if c.patience is not None and state["stall"] >= c.patience:
                        state["stopped_early"] = True
                    if gen % c.checkpoint_every == 0 or gen == c.generations or state["stopped_early"]:
                        self._save(gen, population, state)
                    bar.update(1)
                    bar.set_postfix(best=f"{rec['best_ever']:.4f}")
                    if self.callback is not None and self.callback(gen, rec):
                        break
            finally:
                bar.close()
        finally:
            random.setstate(saved_py)
        best = self.hof[0]
        cls = self.fitness.classes.numpy()
        policy = Policy(cls[best.pairs], best.masks.copy(), self.class_names, self.P, best.fitness.values[0],
                        self.seed, search=self._policy_meta(gen))
        return SearchResult(policy, best.pairs.copy(), best.masks.copy(), float(best.fitness.values[0]),
                            [dict(r) for r in self.logbook], gen, bool(state["stopped_early"]), self.evaluations,
                            time.perf_counter() - t_start, self.time_fitness, population=population_arrays(population),
                            offspring=population_arrays(self.last_offspring))

    def _policy_meta(self, gen: int) -> dict:
        f, c = self.fitness, self.config
        return {"objective": f.objective, "direction": c.direction, "image_weight": f.image_weight,
                "num_draws": f.num_draws, "draw_seed": f.seed, "same_class": c.same_class, "num_pairs": self.N,
                "fitness": f.fitness_kind, "solver": "ga",
                "population": c.population, "generations": gen, "cxpb": c.cxpb, "mutpb": c.mutpb,
                "crossover": c.crossover, "replacement": c.replacement}


def search(fitness: CachedFitness, config: SearchConfig | None = None, /, *, seed: int = 0,
           class_names: list[str] | None = None, checkpoint=None, resume: bool = False, progress: bool = True,
           callback: Callable[[int, dict], bool | None] | None = None, save_checkpoint: bool = True,
           **settings) -> SearchResult:
    """Run the search on ``fitness`` with ``config`` (a :class:`SearchConfig`; default: its tuned operators, the
    paper's are ``PAPER_OPERATORS``) updated by ``**settings`` (its field names, e.g. ``population=100,
    patience=None``; ``fitness`` and ``config`` are positional, so ``fitness="linear"`` names the setting): the
    genetic search, or with ``solver="exhaustive"`` :func:`.exhaustive.exhaustive_search`.

    ``checkpoint``: a file written every ``checkpoint_every`` generations (and at the end); with
    ``resume=True`` an existing checkpoint is continued (same settings required; ``generations``,
    ``patience`` and ``checkpoint_every`` may change, and a search that stopped early goes on when the new
    patience allows it), giving the same result as an uninterrupted run. ``callback(gen, record)`` runs after
    each generation; returning True stops the search. ``save_checkpoint=False`` only reads the checkpoint
    on resume (the DDP ranks other than 0, which must resume from the same generation).
    """
    unknown = set(settings) - {f.name for f in dataclasses.fields(SearchConfig)}
    if unknown:
        raise TypeError(f"search: unknown settings {sorted(unknown)}; see SearchConfig")
    base_config = config or SearchConfig(objective=fitness.objective, num_draws=fitness.num_draws,
                                         fitness=fitness.fitness_kind)
    config = dataclasses.replace(base_config, **settings)
    if config.solver == "exhaustive":
        return exhaustive_search(fitness, config, seed=seed, class_names=class_names)
    return GeneticSearch(fitness, config, seed=seed, class_names=class_names, checkpoint=checkpoint, resume=resume,
                         progress=progress, callback=callback, save_checkpoint=save_checkpoint).run()


__all__ = ["GeneticSearch", "individual_class", "search"]
