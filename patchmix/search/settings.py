"""The settings of a guided search, in one vocabulary: the ``search`` section of a run's configuration
(``--set search.cxpb=0.6``), the keyword arguments of :func:`patchmix.search.search` and the fields of its
checkpoint all use these names.

The scale is the paper's (population 500, 250 generations, ``N = 2K``); the ``digits`` preset of
:mod:`patchmix.config` shrinks the population and the generations for the CPU demo. The operators and their
rates are tuned for the cached fitness (below); :data:`PAPER_OPERATORS` are the paper's own settings
(``--set search.crossover=half --set search.replacement=generational --set search.cxpb=0.5 ...``).

Why the defaults differ from the paper's operators, measured at CIFAR-100 scale (synthetic cache, ``K = 100``,
``N = 200``, ``S = 32``, population 500, 250 generations, seed 0; ``bench/bench_genetic_search.py``): the
paper's operators and rates end 5.5% above the closed-form optimum (1.2% of it from the choice of pairs, the
rest from masks). The fitness is a mean of independent cell and pair contributions, so the search gains from
recombining cells (uniform crossover: 5.5% -> 3.8%), from flip heads moves that keep one class of a pair and
the cells it supplies (pairs' share 1.7% -> 0.6%), from more crossover and mutation (cxpb 1.0, mutpb 0.6:
-> 0.9%) and from letting offspring compete with their parents (mu + lambda with 1.5 offspring per
individual: -> 0.4%).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..choices import (
    CROSSOVERS,
    DIRECTIONS,
    FITNESSES,
    MASK_DISTRIBUTIONS,
    OBJECTIVES,
    REPLACEMENTS,
    SAME_CLASS,
    SOLVERS,
    check_choice,
)
from ..errors import ConfigError
from .pairs import check_num_pairs, default_num_pairs
from .scoring import PRECISIONS

#: The interaction fit and the search check compose the validation split held in memory as uint8; a larger split
#: is refused for ``fitness = interaction`` (``fitness = linear`` needs only f_T's logits) and skips the check.
VALIDATION_MAX_BYTES = 1 << 30

#: ``effort``: default (the settings as given) | fast (the fit's masks per draw and the check's draws capped at
#: :data:`FAST_MASKS_PER_DRAW` and :data:`FAST_CHECK_DRAWS`: about 4x fewer forward passes for the table, 2x for
#: the check; docs/search.md measures what it costs in fidelity).
EFFORTS = ("default", "fast")
FAST_MASKS_PER_DRAW = 16
FAST_CHECK_DRAWS = 16

#: The mutation operators, in the order of ``mutation_weights``.
MUTATIONS = ("flip_tails", "transpose", "flip_heads", "random_tails")

#: The paper's operators and rates (section 2.3, 4.2): a generational step, half-mask crossover with
#: probability 0.5, mutation 0.3 drawing the four operators alike, flip heads drawing any absent pair.
PAPER_OPERATORS = {"replacement": "generational", "crossover": "half", "cxpb": 0.5, "mutpb": 0.3,
                   "mutation_weights": (1.0, 1.0, 1.0, 1.0), "heads_near": 0.0}


@dataclass
class SearchConfig:
    """Settings of the genetic search (``GA``), of its cached fitness (``fitness``) and of its checkpoints."""

    #: GA: individuals per generation (``I``).
    population: int = 500
    #: GA: generations after the initial population (``G``).
    generations: int = 250
    #: GA: ``N``, the number of active class pairs of an individual (None: ``2 K``, capped by the pairs that exist).
    num_pairs: int | None = None
    #: GA: forced | allowed | excluded: how same-class pairs ``(c, c)`` are treated (paper Table 6).
    same_class: str = "forced"
    #: GA: min (hardest interpolations first, the paper's choice) | max.
    direction: str = "min"
    #: GA: plus (parents and offspring compete, the best ``population`` survive: DEAP's mu + lambda) |
    #: generational (the paper's: the ``elite`` best parents and ``population - elite`` offspring).
    replacement: str = "plus"
    #: GA: offspring bred per generation with ``replacement = plus``, as a multiple of the population.
    offspring_ratio: float = 1.5
    #: GA: crossover probability of a pair of offspring (DEAP ``varAnd``'s ``cxpb``; the paper: 0.5).
    cxpb: float = 1.0
    #: GA: mutation probability of an offspring (DEAP ``varAnd``'s ``mutpb``; the paper: 0.3).
    mutpb: float = 0.6
    #: GA: uniform (each cell of a shared pair's mask from either parent) | half (the paper's: the left half
    #: from one parent, the right half from the other).
    crossover: str = "uniform"
    #: GA: tournament size of the selection.
    tournament_size: int = 3
    #: GA: the best individuals that survive each generation unchanged (``replacement = generational``; with
    #: ``plus`` the best always survive).
    elite: int = 1
    #: GA: stop when the best fitness has not improved for this many generations (None: never).
    patience: int | None = 50
    #: GA: relative odds of flip tails, transpose, flip heads, random tails. The paper gives none; the first
    #: two remap every mask at once and mostly hurt a good individual, so they are drawn less often. Measured
    #: at CIFAR-10 scale (synthetic cache, population 300, 250 generations, seeds 1-3), gap to the closed-form
    #: optimum: 0.75% mean with (1, 1, 1, 1), 0.26% with these defaults.
    mutation_weights: tuple[float, float, float, float] = (0.25, 0.25, 1.0, 2.0)
    #: GA: probability that flip heads replaces each free pair (None: one pair on average).
    heads_indpb: float | None = None
    #: GA: probability that flip heads keeps one class of the pair (and the cells it supplies, so the mask
    #: stays meaningful) and draws the other, rather than drawing any absent pair (the paper's move).
    heads_near: float = 1.0
    #: GA: probability that random tails flips each mask cell (None: two cells on average).
    tails_indpb: float | None = None
    #: GA: crossover also exchanges the slots whose pairs the parents do not share (the paper is silent).
    cx_pairs: bool = True
    #: fitness: logprob | accuracy, the per-patch score of the cached fitness.
    objective: str = "logprob"
    #: fitness: ``S``, validation pairs drawn per class pair (once per search).
    num_draws: int = 32
    #: fitness: the kind, interaction (a per-pair table of each cell's score on composed images that depends on
    #: which other cells come from the other image, fitted on f_T) | linear (a table of each cell scored on its
    #: unmixed source: one pass over the validation set, but blind to what the other image does; docs/search.md) |
    #: exact (no table: the paper's fitness, f_T run on every composed sample, ``I * N * S`` forward passes per
    #: generation). ``--fitness`` sets it.
    fitness: str = "interaction"
    #: fitness (interaction): ``M``, random masks composed with each draw to fit the model (``Q * S * M`` forward
    #: passes of f_T).
    masks_per_draw: int = 64
    #: fitness (interaction): ridge penalty on the model's interaction coefficients (in squared score units).
    ridge: float = 10.0
    #: fitness (interaction): half | spread, the fill of the random masks the model is fitted on.
    mask_distribution: str = "half"
    #: fitness: default | fast, trading the table's and the check's fidelity for time (:data:`EFFORTS`).
    effort: str = "default"
    #: fitness: auto | float32 | bfloat16, the forward passes of f_T for the table, the exact fitness and the check
    #: (auto: bfloat16 autocast where the device computes it natively, a CPU with AVX512-BF16 or AMX or a CUDA
    #: device; float32 elsewhere; docs/search.md measures the fidelity either way).
    precision: str = "auto"
    #: solver: ga (the DEAP search) | exhaustive (the optimum itself: every mask of every pair scored; patch-only
    #: fitness, ``P <= 4`` for the interaction table).
    solver: str = "ga"
    #: checkpoints: write the search checkpoint every n generations (and at the end).
    checkpoint_every: int = 10

    def validate(self, num_classes: int | None = None) -> None:
        """Raises :class:`~patchmix.errors.ConfigError` naming the bad setting; ``num_pairs`` is checked
        against ``num_classes`` when it is given."""
        check_choice("search.same_class", self.same_class, SAME_CLASS, ConfigError)
        check_choice("search.direction", self.direction, DIRECTIONS, ConfigError)
        check_choice("search.objective", self.objective, OBJECTIVES, ConfigError)
        check_choice("search.crossover", self.crossover, CROSSOVERS, ConfigError)
        check_choice("search.replacement", self.replacement, REPLACEMENTS, ConfigError)
        check_choice("search.fitness", self.fitness, FITNESSES, ConfigError)
        check_choice("search.mask_distribution", self.mask_distribution, MASK_DISTRIBUTIONS, ConfigError)
        check_choice("search.solver", self.solver, SOLVERS, ConfigError)
        check_choice("search.effort", self.effort, EFFORTS, ConfigError)
        check_choice("search.precision", self.precision, PRECISIONS, ConfigError)
        if not self.ridge > 0 or self.ridge == float("inf"):
            raise ConfigError(f"search.ridge must be a finite number > 0, got {self.ridge}")
        for name, low in (("population", 2), ("generations", 0), ("tournament_size", 1), ("num_draws", 1),
                          ("checkpoint_every", 1), ("masks_per_draw", 1)):
            if getattr(self, name) < low:
                raise ConfigError(f"search.{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("cxpb", "mutpb", "heads_near"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"search.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.offspring_ratio <= 0 or self.offspring_ratio * self.population < 1:
            raise ConfigError(f"search.offspring_ratio must be > 0 (at least one offspring), got "
                              f"{self.offspring_ratio}")
        if not 0 <= self.elite < self.population:
            raise ConfigError(f"search.elite must be in [0, population), got {self.elite}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"search.patience must be >= 1 or none (never stop early), got {self.patience}")
        w = np.asarray(self.mutation_weights, dtype=np.float64)
        if w.shape != (4,) or (w < 0).any() or w.sum() <= 0:
            raise ConfigError(f"search.mutation_weights must be 4 non-negative weights for {MUTATIONS}, "
                              f"got {self.mutation_weights}")
        for name in ("heads_indpb", "tails_indpb"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise ConfigError(f"search.{name} must be in (0, 1] or none, got {v}")
        if self.num_pairs is not None and self.num_pairs < 1:
            raise ConfigError(f"search.num_pairs must be >= 1 or none (2 K), got {self.num_pairs}")
        if num_classes is not None:
            try:
                check_num_pairs(self.resolved_pairs(num_classes), num_classes, self.same_class)
            except ValueError as exc:
                raise ConfigError(f"search.{exc}") from None

    def check_dataset(self, num_images: int, image_bytes: int, grid_size: int) -> None:
        """The settings that need the validation split (``num_images`` of ``image_bytes`` each as uint8) and the
        grid: the interaction table composes the split in memory; the exhaustive solver enumerates ``2^(P*P)``
        masks per pair of an interaction table. Raises :class:`~patchmix.errors.ConfigError`."""
        size = num_images * image_bytes
        if self.fitness != "linear" and size > VALIDATION_MAX_BYTES:
            raise ConfigError(f"search.fitness = {self.fitness} composes the validation split in memory "
                              f"({size / 2**30:.1f} GiB as uint8, over {VALIDATION_MAX_BYTES / 2**30:.0f} GiB); use "
                              f"--fitness linear")
        if self.solver == "exhaustive" and self.fitness == "exact":
            raise ConfigError("search.solver = exhaustive needs a table (search.fitness = interaction or linear); the "
                              "exact fitness is searched by the GA")
        if self.solver == "exhaustive" and self.fitness == "interaction" and grid_size > 4:
            raise ConfigError(f"search.solver = exhaustive enumerates 2^(P*P) masks per pair, out of reach for "
                              f"P = {grid_size} > 4; use search.solver=ga")

    def resolved_pairs(self, num_classes: int) -> int:
        """``num_pairs``, or the paper's default ``2 K`` capped by the pairs that exist (3 for 2 classes)."""
        if self.num_pairs is not None:
            return int(self.num_pairs)
        return default_num_pairs(num_classes, self.same_class)

    def fit_masks(self) -> int:
        """``M``, the masks per draw the interaction table is fitted on at this ``effort``."""
        return self.masks_per_draw if self.effort == "default" else min(self.masks_per_draw, FAST_MASKS_PER_DRAW)

    def check_draws(self, requested: int) -> int:
        """The search check's draws per pair at this ``effort``, ``requested`` being ``run.fidelity_draws``."""
        return requested if self.effort == "default" else min(requested, FAST_CHECK_DRAWS)

    @property
    def num_offspring(self) -> int:
        """Offspring bred per generation: ``population - elite`` (generational), ``offspring_ratio * population``
        (plus)."""
        if self.replacement == "generational":
            return self.population - self.elite
        return max(1, int(round(self.offspring_ratio * self.population)))


__all__ = ["EFFORTS", "FAST_CHECK_DRAWS", "FAST_MASKS_PER_DRAW", "MUTATIONS", "PAPER_OPERATORS",
           "VALIDATION_MAX_BYTES", "SearchConfig"]
