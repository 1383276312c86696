"""Genetic search over class pairs and grid masks (paper section 2.3, 4.2), driven by DEAP.

Individual. ``N`` slots, each an active class pair (an id of ``pair_classes(K)``) with a ``P x P`` mask:
``pairs (N,)`` int64 and ``masks (N, P, P)`` bool numpy arrays inside a DEAP ``creator`` class. With
same-class pairs ``"forced"`` the first ``K`` slots hold ``(c, c)`` for every class (their masks are still
searched); ``"allowed"`` lets them compete with the other pairs; ``"excluded"`` never uses them. Every slot
is active, so an individual has exactly ``N`` (at most ``N``, as the paper asks) distinct pairs: the fitness
is a mean over pairs, and letting the count shrink would make a single pair optimal.

One generation (DEAP ``toolbox``): parents are chosen by tournament (``tools.selTournament``), varied by
``algorithms.varAnd`` (crossover with probability ``cxpb``, mutation with ``mutpb``) and the offspring
scored together by one call of ``patchmix.ops.population_fitness`` through the toolbox's ``map``. The next
population (``replacement``): ``plus`` (default) keeps the best ``population`` of parents and offspring
(``offspring_ratio * population`` offspring; DEAP's mu + lambda with truncation, offspring identical to
their parent dropped); ``generational`` (the paper's) keeps the ``elite`` best parents and
``population - elite`` offspring. ``tools.HallOfFame`` keeps the best individual ever seen;
``tools.Logbook`` records best/mean/worst fitness and the pairs entering or leaving the best individual.

Operators (each shown by a test in ``tests/test_search.py``):

* crossover: for every pair present in both parents the masks are recombined: ``uniform`` (default) takes
  each cell from either parent with probability 1/2 (the children are complementary); ``half`` (the
  paper's) gives child 1 mask columns ``< P // 2`` (the left half) from parent 1 and the rest from parent 2,
  child 2 the opposite. With ``cx_pairs`` (default; the paper is silent on how pair *sets* recombine) the
  slots whose pairs the parents do not share are also exchanged, each with probability 1/2, mask included,
  so good pairs spread between individuals.
* flip tails: invert every active mask.
* transpose: transpose every mask.
* flip heads: replace active (non-forced) pairs, each with probability ``heads_indpb`` (at least one), by
  pairs the individual lacks. With probability ``heads_near`` the new pair keeps one class of the old one
  and the cells that class supplies (the mask is inverted when the kept class changes sides); else it is
  any absent pair and the slot keeps its mask (the paper's move).
* random tails: flip mask cells, each with probability ``tails_indpb`` (at least one).

Reproducibility: numpy ``Generator`` for the operators and a private copy of the ``random`` module state
for DEAP's selection and ``varAnd`` (swapped in around each generation, so the caller's global ``random``
state is untouched). Both are checkpointed with the population, so ``resume`` continues bit for bit.

Checkpoints are one ``.npz`` file (numpy's zip of arrays): the population, the hall of fame and the generator
states as arrays, plus a JSON document as a string array (settings, logbook, counters). They are read with
``allow_pickle=False``: loading a checkpoint never runs code from the file.

DEAP's ``creator`` classes (the individuals with a minimising or maximising fitness) are created on first
use, not at import: importing :mod:`patchmix` neither imports DEAP nor touches its global ``creator``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._optional import missing_extra, require
from ..errors import CheckpointError, ConfigError
from ..files import atomic_path
from .fitness import CachedFitness
from .pairs import pair_classes, pair_id, random_genome, slot_pools

try:
    from deap import algorithms, base, creator, tools
except ModuleNotFoundError as exc:
    raise missing_extra("deap", "search", "patchmix.search's genetic search") from exc
from .policy import Policy
from .settings import MUTATIONS, SearchConfig

CHECKPOINT_FORMAT = "patchmix-search-checkpoint-2"


class Genome:
    """``pairs (N,)`` int64 pair ids and ``masks (N, P, P)`` bool; the DEAP individual's base class."""

    def __init__(self, pairs: np.ndarray, masks: np.ndarray):
        self.pairs = pairs
        self.masks = masks

    def __eq__(self, other) -> bool:
        return np.array_equal(self.pairs, other.pairs) and np.array_equal(self.masks, other.masks)

    __hash__ = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pairs={self.pairs.tolist()}, fitness={getattr(self, 'fitness', None)})"


def individual_class(direction: str):
    """The DEAP individual class whose fitness is minimised (``"min"``) or maximised (``"max"``); the
    ``creator`` classes are made on the first call (``creator.create`` registers them process-wide)."""
    if not hasattr(creator, "PatchMixIndividualMin"):
        creator.create("PatchMixFitnessMin", base.Fitness, weights=(-1.0,))
        creator.create("PatchMixFitnessMax", base.Fitness, weights=(1.0,))
        creator.create("PatchMixIndividualMin", Genome, fitness=creator.PatchMixFitnessMin)
        creator.create("PatchMixIndividualMax", Genome, fitness=creator.PatchMixFitnessMax)
    return creator.PatchMixIndividualMin if direction == "min" else creator.PatchMixIndividualMax


def clone(ind):
    """Fast copy (arrays copied, fitness carried): DEAP's default deepcopy costs ~10x more."""
    cls = type(ind)
    new = cls.__new__(cls)  # skips creator's __init__ (a fresh Fitness object per call: ~30 us)
    new.pairs = ind.pairs.copy()
    new.masks = ind.masks.copy()
    fit = ind.fitness
    new.fitness = type(fit).__new__(type(fit))
    new.fitness.wvalues = fit.wvalues
    return new


# --------------------------------------------------------------------------------------------------
# initialisation and operators (numpy; ``rng`` is a numpy Generator)
# --------------------------------------------------------------------------------------------------


def coin_flips(rng: np.random.Generator, shape) -> np.ndarray:
    """Fair random booleans of ``shape``, from random bytes (8 per byte: a third of the time of
    ``rng.random(shape) < 0.5`` for a 2,000-pair individual's 32,000 cells)."""
    n = int(np.prod(shape))
    bits = np.unpackbits(rng.integers(0, 256, size=(n + 7) // 8, dtype=np.uint8))
    return bits[:n].view(bool).reshape(shape)


def shared_slots(pairs1: np.ndarray, pairs2: np.ndarray, scratch: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Slots ``(i1, i2)`` with ``pairs1[i1] == pairs2[i2]`` (pair ids unique within an individual).

    ``scratch``: int32 zeros with one entry per pair id (``Q``), returned to zeros: a lookup instead of
    ``np.intersect1d``'s sort (at ImageNet scale, ``N = 2000``: 0.8 ms -> a few us per crossover)."""
    if scratch is None:
        _, i1, i2 = np.intersect1d(pairs1, pairs2, assume_unique=True, return_indices=True)
        return i1, i2
    scratch[pairs1] = np.arange(1, len(pairs1) + 1, dtype=np.int32)
    hit = scratch[pairs2]
    scratch[pairs1] = 0
    i2 = np.flatnonzero(hit)
    return hit[i2].astype(np.int64) - 1, i2


def crossover(ind1, ind2, rng: np.random.Generator, num_forced: int = 0, cx_pairs: bool = True,
              kind: str = "uniform", scratch: np.ndarray | None = None):
    """Mask crossover of the shared pairs (``uniform`` cells or the paper's ``half`` masks) and, with
    ``cx_pairs``, exchange of unshared slots with their masks; in place. ``scratch``: see :func:`shared_slots`."""
    i1, i2 = shared_slots(ind1.pairs, ind2.pairs, scratch)
    m1, m2 = ind1.masks[i1], ind2.masks[i2]
    if kind == "uniform":
        swap = coin_flips(rng, m1.shape)
    else:  # half: child 1 keeps its left half (columns < P // 2) and takes the right half of parent 2
        swap = np.zeros(m1.shape, bool)
        swap[..., m1.shape[-1] // 2:] = True
    ind1.masks[i1] = np.where(swap, m2, m1)
    ind2.masks[i2] = np.where(swap, m1, m2)
    if cx_pairs:
        shared1 = np.zeros(len(ind1.pairs), bool)
        shared1[i1] = True
        shared2 = np.zeros(len(ind2.pairs), bool)
        shared2[i2] = True
        u1 = np.flatnonzero(~shared1[num_forced:]) + num_forced
        u2 = np.flatnonzero(~shared2[num_forced:]) + num_forced
        if len(u1):
            u2 = rng.permutation(u2)
            swap = rng.random(len(u1)) < 0.5
            s1, s2 = u1[swap], u2[swap]
            p1, m1 = ind1.pairs[s1].copy(), ind1.masks[s1].copy()
            ind1.pairs[s1], ind1.masks[s1] = ind2.pairs[s2], ind2.masks[s2]
            ind2.pairs[s2], ind2.masks[s2] = p1, m1
    return ind1, ind2


def flip_tails(ind):
    """Invert every active mask (True <-> False)."""
    np.logical_not(ind.masks, out=ind.masks)
    return (ind,)


def transpose(ind):
    """Transpose every mask (cell ``(r, c)`` <- ``(c, r)``)."""
    ind.masks = np.ascontiguousarray(ind.masks.transpose(0, 2, 1))
    return (ind,)


class PairNeighbours:
    """The pairs that share a class with a given pair, for the ``near`` moves of flip heads: for ``K``
    classes and the pairs a slot may hold (``optional``), ``candidates(c)`` lists the allowed pair ids
    ``{c, d}`` for every class ``d`` (``K`` lookups, no table of neighbours: ``Q`` is 500,500 at ``K = 1000``)."""

    def __init__(self, num_classes: int, optional: np.ndarray):
        self.K = num_classes
        self.classes = pair_classes(num_classes).numpy()
        self.allowed = np.zeros(len(self.classes), bool)
        self.allowed[optional] = True
        self._all = np.arange(num_classes)

    def candidates(self, c: int) -> np.ndarray:
        ids = pair_id(c, self._all, self.K)
        return ids[self.allowed[ids]]


def flip_heads(ind, rng: np.random.Generator, optional: np.ndarray, num_forced: int = 0, indpb: float | None = None,
               near: float = 0.0, neighbours: PairNeighbours | None = None):
    """Replace non-forced pairs (each with probability ``indpb``, at least one) by pairs the individual lacks.

    With probability ``near`` (needs ``neighbours``) the new pair keeps one class ``c`` of the old pair and
    draws the other; ``c`` keeps supplying the same cells (a pair's True cells come from its first class, so
    the mask is inverted when ``c`` changes sides). Otherwise any absent pair, the slot keeping its mask.
    """
    free = len(ind.pairs) - num_forced
    if free <= 0 or len(optional) <= free:
        return (ind,)
    p = 1.0 / free if indpb is None else indpb
    chosen = np.flatnonzero(rng.random(free) < p)
    if len(chosen) == 0:
        chosen = rng.integers(free, size=1)
    present = set(ind.pairs.tolist())
    for slot in chosen + num_forced:
        old = int(ind.pairs[slot])
        cand = -1
        if neighbours is not None and near > 0 and rng.random() < near:
            a, b = neighbours.classes[old]
            keep_first = bool(rng.random() < 0.5)
            kept = int(a if keep_first else b)
            options = [q for q in neighbours.candidates(kept).tolist() if q not in present]
            if options:
                cand = options[int(rng.integers(len(options)))]
                lo, hi = neighbours.classes[cand]
                if lo != hi and (lo == kept) != keep_first:  # the kept class changed sides
                    np.logical_not(ind.masks[slot], out=ind.masks[slot])
        while cand < 0:
            q = int(optional[rng.integers(len(optional))])
            if q not in present:
                cand = q
        present.discard(old)
        present.add(cand)
        ind.pairs[slot] = cand
    return (ind,)


def random_tails(ind, rng: np.random.Generator, indpb: float | None = None):
    """Flip mask cells, each with probability about ``indpb`` (default ``2 / (N * P * P)``), at least one: a
    binomial count of cells drawn at random (a cell drawn twice flips once)."""
    size = ind.masks.size
    p = 2.0 / size if indpb is None else indpb
    count = max(1, int(rng.binomial(size, p)))
    cells = np.unique(rng.integers(size, size=count))
    ind.masks.flat[cells] = ~ind.masks.flat[cells]
    return (ind,)


# --------------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------------


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


def _fingerprint(fitness: CachedFitness) -> str:
    h = hashlib.sha256()
    if hasattr(fitness, "fingerprint"):  # ExactFitness: f_T's weights and the draws
        h.update(fitness.fingerprint())
        return h.hexdigest()
    h.update(fitness.table.double().cpu().numpy().tobytes())
    h.update(fitness.draws.numpy().tobytes())
    h.update(f"{fitness.objective}|{fitness.image_weight}|{fitness.grid_size}".encode())
    return h.hexdigest()


def _check_fitness_settings(fitness: CachedFitness, config: SearchConfig) -> None:
    """The fitness settings of ``config`` are those the fitness object was built with."""
    for name, built in (("objective", fitness.objective), ("num_draws", fitness.num_draws),
                        ("fitness", fitness.table_kind)):
        if getattr(config, name) != built:
            raise ConfigError(f"search.{name} = {getattr(config, name)!r} but the fitness was built with {built!r}")


class GeneticSearch:
    """The DEAP search; :func:`search` is the one-call interface. ``run()`` may be called once."""

    def __init__(self, fitness: CachedFitness, config: SearchConfig | None = None, *, seed: int = 0,
                 class_names: list[str] | None = None, checkpoint=None, resume: bool = False, progress: bool = True,
                 callback: Callable[[int, dict], bool | None] | None = None, save_checkpoint: bool = True):
        self.fitness = fitness
        self.config = config or SearchConfig(objective=fitness.objective, num_draws=fitness.num_draws,
                                             fitness=fitness.table_kind)
        K = fitness.num_classes
        self.config.validate(K)
        _check_fitness_settings(fitness, self.config)
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
            "format": CHECKPOINT_FORMAT,
            "config": self._config_key(),
            "fingerprint": self._fingerprint,
            "gen": gen,
            "logbook": list(self.logbook),
            "rng": self.rng.bit_generator.state,
            "py_state": self.py_state,
            "state": dict(state, prev_best=sorted(state["prev_best"])),
            "evaluations": self.evaluations,
        }
        hof = self.hof[0]
        arrays = {
            **_arrays(population),
            "hof_pairs": hof.pairs, "hof_masks": hof.masks, "hof_value": np.float64(hof.fitness.values[0]),
            "meta": np.array(json.dumps(meta)),  # a unicode array: no pickle needed to read it back
        }
        with atomic_path(self.checkpoint) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # a file object: numpy would append ".npz" to a path

    def _load(self):
        path = os.fspath(self.checkpoint)
        try:
            with np.load(path, allow_pickle=False) as z:  # never unpickle: a checkpoint must not run code
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(str(arrays.pop("meta")))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise CheckpointError(f"search: cannot read checkpoint {path} ({type(exc).__name__}: {exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"search: {path} is not a patchmix search checkpoint (format {CHECKPOINT_FORMAT})")
        if meta["config"] != self._config_key():
            raise CheckpointError(f"search: checkpoint {path} was written with other settings {meta['config']}; "
                                  f"resume needs the same ones (got {self._config_key()})")
        if meta["fingerprint"] != self._fingerprint:
            raise CheckpointError(f"search: checkpoint {path} was written for another fitness (cache, draws or "
                                  f"objective)")
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
        self._fingerprint = _fingerprint(self.fitness) if self.checkpoint is not None else None
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
                            time.perf_counter() - t_start, self.time_fitness, population=_arrays(population),
                            offspring=_arrays(self.last_offspring))

    def _policy_meta(self, gen: int) -> dict:
        f, c = self.fitness, self.config
        return {"objective": f.objective, "direction": c.direction, "image_weight": f.image_weight,
                "num_draws": f.num_draws, "draw_seed": f.seed, "same_class": c.same_class, "num_pairs": self.N,
                "table": f.table_kind, "solver": "ga",
                "population": c.population, "generations": gen, "cxpb": c.cxpb, "mutpb": c.mutpb,
                "crossover": c.crossover, "replacement": c.replacement}


def _arrays(individuals: list) -> dict[str, np.ndarray]:
    """``{"pairs" (I, N), "masks" (I, N, P, P), "values" (I,)}`` of scored individuals (empty dict for none)."""
    if not individuals:
        return {}
    return {"pairs": np.stack([ind.pairs for ind in individuals]),
            "masks": np.stack([ind.masks for ind in individuals]),
            "values": np.array([ind.fitness.values[0] for ind in individuals], dtype=np.float64)}


def search(fitness: CachedFitness, config: SearchConfig | None = None, /, *, seed: int = 0,
           class_names: list[str] | None = None, checkpoint=None, resume: bool = False, progress: bool = True,
           callback: Callable[[int, dict], bool | None] | None = None, save_checkpoint: bool = True,
           **settings) -> SearchResult:
    """Run the genetic search on ``fitness`` with ``config`` (a :class:`SearchConfig`; default: its tuned
    operators, the paper's are ``PAPER_OPERATORS``) updated by ``**settings`` (its field names, e.g. ``population=100, patience=None``; ``fitness`` and ``config`` are positional, so
    ``fitness="linear"`` names the setting).

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
                                         fitness=fitness.table_kind)
    config = dataclasses.replace(base_config, **settings)
    if config.solver == "exhaustive":
        return exhaustive_search(fitness, config, seed=seed, class_names=class_names)
    return GeneticSearch(fitness, config, seed=seed, class_names=class_names, checkpoint=checkpoint, resume=resume,
                         progress=progress, callback=callback, save_checkpoint=save_checkpoint).run()


def exhaustive_search(fitness: CachedFitness, config: SearchConfig, *, seed: int = 0,
                      class_names: list[str] | None = None) -> SearchResult:
    """The optimum of the patch-only fitness (``solver = exhaustive``): per pair the best mask
    (:meth:`CachedFitness.best_masks`: closed form for a linear table, all ``2^(P*P)`` masks scored on the op for an
    interaction table, ``P <= 4``), then the best pairs for the ``N`` slots (:meth:`CachedFitness.optimum`). Exact
    where the GA approximates; needs ``image_weight = 0`` (the image term is not separable into cells). The result
    has no logbook and no population (``generations = 0``)."""
    config.validate(fitness.num_classes)
    _check_fitness_settings(fitness, config)
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
    evaluations = fitness.num_pairs * (2 ** (fitness.grid_size ** 2) if fitness.table_kind == "interaction" else 2)
    meta = {"objective": fitness.objective, "direction": config.direction, "image_weight": fitness.image_weight,
            "num_draws": fitness.num_draws, "draw_seed": fitness.seed, "same_class": config.same_class,
            "num_pairs": N, "table": fitness.table_kind, "solver": "exhaustive"}
    policy = Policy(cls[opt.pairs], opt.masks.copy(), names, fitness.grid_size, opt.fitness, seed, search=meta)
    return SearchResult(policy, opt.pairs.copy(), opt.masks.copy(), float(opt.fitness), [], 0, False, evaluations,
                        seconds, seconds)


__all__ = ["MUTATIONS", "GeneticSearch", "Genome", "PairNeighbours", "SearchConfig", "SearchResult", "clone",
           "coin_flips", "crossover", "exhaustive_search", "flip_heads", "flip_tails", "individual_class",
           "random_tails", "search",
           "shared_slots", "transpose"]
