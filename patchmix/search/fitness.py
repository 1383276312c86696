"""The cached fitness of guided-search individuals: a table of per-pair, per-cell scores scored by the batched op
``patchmix.ops.population_fitness``, its per-pair optimum, and the random populations the search and its check
start from.

Pairs are the ``Q = K (K + 1) / 2`` unordered class pairs of :mod:`.pairs`.

Cached fitness (docs/semantics.md, "The cached fitness"). ``CachedFitness`` draws, once per search and from its
seed, ``S`` validation pairs ``(a, b)`` per class pair (``a`` of class ``c_i``, ``b`` of ``c_j``, uniformly with
replacement: :func:`draw_pairs`). The fitness of an individual is the mean over its active pairs of the mean
patch score of the composed samples (``objective="logprob"`` -> ``log_softmax(logits)[label]``, ``"accuracy"`` ->
``1[argmax == label]``, each patch against its source's label), plus optionally ``image_weight`` times an
image-level term (see ``patchmix.ops.population_fitness``). The patch term comes from a table, so every generation
costs one call of ``patchmix.ops.population_fitness``:

* the **interaction** table ``(Q, P*P, 2, P*P)`` (the default of ``patchmix run``/``search``, built by
  :func:`patchmix.search.interaction_fitness`): a model of each cell's score on the *composed* image that depends
  on which other cells come from the other image, fitted on ``f_T``'s scores of composed draws;
* the **linear** table ``(Q, P*P, 2)`` (built here from the cache): patch ``n`` scored with the cached prediction
  of its source image at patch ``n`` on the unmixed image, a mean over draws per pair, cell and source.
  ``exact_reference`` recomputes it by composing every draw's cached logits explicitly (for tests and doubts).

:class:`patchmix.search.exact.ExactFitness` runs ``f_T`` on the composed images themselves: the ground truth both
tables approximate. The cache and the draws are in :mod:`.cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..choices import DIRECTIONS, OBJECTIVES, SAME_CLASS, check_choice
from ..ops.population_fitness import population_fitness
from .cache import CachedLogits, draw_pairs
from .pairs import check_num_pairs, pair_classes, pair_id, random_genome, slot_pools


@dataclass
class OptimumResult:
    """Optimum of the patch-only fitness: ``fitness``, pair ids ``(M,)`` and masks ``(M, P, P)``."""

    fitness: float
    pairs: np.ndarray
    masks: np.ndarray


#: Largest grid whose masks :meth:`CachedFitness.best_masks` enumerates for an interaction table (2^16 per pair).
MAX_ENUMERATED_GRID = 4


@dataclass
class CachedFitness:
    """Batched fitness of guided-search individuals from a table of per-pair, per-cell scores, with the
    validation draws fixed once from ``seed``.

    ``__call__(pairs (I, N) int64, masks (I, N, P, P) bool) -> (I,)`` float64 tensor. Raw scores: higher means
    ``f_T`` finds the composed samples easier; the search minimises or maximises them.

    Two tables (``patchmix.ops.population_fitness`` scores both):

    * linear ``(Q, P*P, 2)`` (``kind == "linear"``, built here from the cache when ``table`` is None): a cell's
      score is the cached score of its source image's patch on the *unmixed* image; linear in the mask, with a
      closed-form optimum. It ignores what the other image does to a cell: on a model whose cells see their
      neighbours it ranks policies poorly (docs/search.md).
    * interaction ``(Q, P*P, 2, P*P)`` (``kind == "interaction"``): a cell's score also depends on which other
      cells come from the other image, fitted on ``f_T``'s scores of composed images
      (:func:`patchmix.search.interaction_fitness` builds it on these draws).

    Args:
        cache: the validation cache (its labels fix the draws; its logits serve the linear table and the image term).
        num_draws: ``S`` validation pairs ``(a, b)`` per class pair.
        objective: ``"logprob"`` (mean patch log-probability of the source label, ``-L_P / P^2``) or
            ``"accuracy"`` (patch accuracy).
        image_weight: weight of the image-level term (0: patch-only, with an optimum per pair).
            Not separable into cells, so it is recomputed per draw from the cache: ``I * N * S * P*P * K``
            multiply-adds per generation (5e9 at CIFAR-100 scale with S = 32: minutes per generation on 2 CPU
            cores; use a few draws, or CUDA), against ``I * N * P*P`` table lookups for a linear patch term.
        seed: seed of the draws.
        dtype: dtype of the table handed to the op (float64 default: exact ties, reproducible ranking).
        device: where the op runs (CPU default; CUDA runs the Triton kernel).
        table: a prebuilt table (linear or interaction) for these draws; None builds the linear one.
    """

    cache: CachedLogits
    num_draws: int = 32
    objective: str = "logprob"
    image_weight: float = 0.0
    seed: int = 0
    dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"
    table: Tensor | None = field(default=None, repr=False)
    draws: Tensor = field(init=False, repr=False)
    classes: Tensor = field(init=False, repr=False)
    #: how the table was built (the interaction fit's statistics; empty for the linear table)
    build: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self):
        check_choice("objective", self.objective, OBJECTIVES)
        if self.num_draws < 1:
            raise ValueError(f"CachedFitness: num_draws must be >= 1, got {self.num_draws}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"CachedFitness: dtype must be float32 or float64, got {self.dtype}")
        K, PP = self.cache.num_classes, self.grid_size ** 2
        self.classes = pair_classes(K)
        self.draws = draw_pairs(self.cache.labels, K, self.num_draws, self.seed)  # (Q, S, 2)
        Q = self.classes.shape[0]
        if self.table is None:
            scores = self.cache.patch_scores(self.objective)  # (V, PP) float64
            self.table = torch.stack([scores[self.draws[..., 1]].mean(1), scores[self.draws[..., 0]].mean(1)], -1)
        elif tuple(self.table.shape) not in ((Q, PP, 2), (Q, PP, 2, PP)):
            raise ValueError(f"CachedFitness: table must be (Q, P*P, 2) = ({Q}, {PP}, 2) or (Q, P*P, 2, P*P) = "
                             f"({Q}, {PP}, 2, {PP}), got {tuple(self.table.shape)}")
        self.table = self.table.to(self.device, self.dtype).contiguous()
        self._logits = None
        if self.image_weight != 0.0:
            self._logits = self.cache.logits.to(self.device, self.dtype).contiguous()
        self._draws_dev = self.draws.to(self.device)
        self._classes_dev = self.classes.to(self.device)

    @property
    def fitness_kind(self) -> str:
        """``"linear"`` (a ``(Q, P*P, 2)`` table) or ``"interaction"`` (``(Q, P*P, 2, P*P)``)."""
        return "linear" if self.table.dim() == 3 else "interaction"

    @property
    def num_classes(self) -> int:
        return self.cache.num_classes

    @property
    def grid_size(self) -> int:
        return self.cache.grid_size

    @property
    def num_pairs(self) -> int:
        """``Q``, the number of unordered class pairs."""
        return self.classes.shape[0]

    def pair_id(self, i, j):
        return pair_id(i, j, self.num_classes)

    def __call__(self, pairs, masks) -> Tensor:
        pairs = torch.as_tensor(pairs).to(self.device)
        masks = torch.as_tensor(masks).to(self.device)
        if self.image_weight == 0.0:
            return population_fitness(self.table, pairs, masks)
        return population_fitness(self.table, pairs, masks, self._logits, self._draws_dev, self._classes_dev,
                                  self.image_weight)

    def exact_reference(self, pairs, masks) -> Tensor:
        """Same value as ``__call__`` computed the long way: compose every draw's patch logits with the mask,
        score each patch against its patch target (docs/semantics.md) and the image term on the composed sample,
        then average. Memory ``I * N * S * P*P * K``: for small checks only. float64 ``(I,)``. Linear table only
        (an interaction table is a fit to ``f_T`` on composed images: :class:`ExactFitness` is its ground truth)."""
        if self.fitness_kind != "linear":
            raise ValueError("exact_reference: only the linear table is computed from the cache; compare an "
                             "interaction table with ExactFitness")
        pairs = torch.as_tensor(pairs).cpu()
        masks = torch.as_tensor(masks).cpu()
        n_ind, N, P = masks.shape[0], masks.shape[1], masks.shape[2]
        PP = P * P
        act = pairs >= 0
        q = pairs.clamp_min(0)
        m = masks.reshape(n_ind, N, 1, PP, 1)
        d = self.draws[q]  # (I, N, S, 2)
        z = self.cache.logits.double()
        comp = torch.where(m, z[d[..., 0]], z[d[..., 1]])  # (I, N, S, PP, K)
        cls = self.classes[q]  # (I, N, 2)
        target = torch.where(m[..., 0], cls[..., 0, None, None], cls[..., 1, None, None])  # (I, N, S, PP)
        target = target.expand(comp.shape[:-1])
        if self.objective == "logprob":
            patch = torch.log_softmax(comp, -1).gather(-1, target[..., None])[..., 0]
        else:
            patch = (comp.argmax(-1) == target).double()
        val = patch.mean((-1, -2))  # (I, N)
        if self.image_weight != 0.0:
            lp = torch.log_softmax(comp.mean(-2), -1)  # (I, N, S, K)
            lam = masks.reshape(n_ind, N, PP).double().mean(-1)[..., None]
            S = lp.shape[2]
            ci = cls[..., 0, None, None].expand(n_ind, N, S, 1)
            cj = cls[..., 1, None, None].expand(n_ind, N, S, 1)
            img = lam * lp.gather(-1, ci)[..., 0] + (1 - lam) * lp.gather(-1, cj)[..., 0]
            val = val + self.image_weight * img.mean(-1)
        return torch.where(act, val, 0.0).sum(-1) / act.sum(-1)

    # ---------------------------------------------------------------------------------------------
    # closed form (patch-only objective)
    # ---------------------------------------------------------------------------------------------

    def best_masks(self, direction: str = "min", pairs_per_call: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per pair, the best mask and its patch-only value: ``masks (Q, P, P)`` bool, ``values (Q,)`` float64.

        Linear table: each cell independently takes the side with the lower (``min``) or higher score. Interaction
        table: every one of the ``2^(P*P)`` masks of every pair is scored by ``patchmix.ops.population_fitness``
        (one-slot individuals, ``pairs_per_call`` pairs per call, default about 2^20 masks), so ``P <=``
        :data:`MAX_ENUMERATED_GRID`; ties go to the lowest mask number (bit ``n`` is cell ``n``)."""
        check_choice("direction", direction, DIRECTIONS)
        P, PP = self.grid_size, self.grid_size ** 2
        if self.fitness_kind == "linear":
            t = self.table.double().cpu().numpy()
            take_a = t[..., 1] < t[..., 0] if direction == "min" else t[..., 1] > t[..., 0]
            vals = np.where(take_a, t[..., 1], t[..., 0]).mean(-1)
            return take_a.reshape(-1, P, P), vals
        if P > MAX_ENUMERATED_GRID:
            raise ValueError(f"best_masks: enumerating the 2^{PP} masks of a {P}x{P} grid per pair is out of reach; "
                             f"the exhaustive optimum needs P <= {MAX_ENUMERATED_GRID} (use the genetic search)")
        E = 1 << PP
        codes = torch.arange(E, device=self.table.device)
        every = ((codes[:, None] >> torch.arange(PP, device=codes.device)) & 1).bool().reshape(E, 1, P, P)
        chunk = pairs_per_call or max(1, (1 << 20) // E)
        Q = self.num_pairs
        best = np.empty(Q, dtype=np.int64)
        vals = np.empty(Q, dtype=np.float64)
        for lo in range(0, Q, chunk):
            qs = torch.arange(lo, min(Q, lo + chunk), device=self.table.device)
            pairs = qs.repeat_interleave(E)[:, None]
            v = population_fitness(self.table, pairs, every.repeat(len(qs), 1, 1, 1)).reshape(len(qs), E)
            i = v.argmin(1) if direction == "min" else v.argmax(1)
            best[lo:lo + len(qs)] = i.cpu().numpy()
            vals[lo:lo + len(qs)] = v.gather(1, i[:, None])[:, 0].double().cpu().numpy()
        masks = ((best[:, None] >> np.arange(PP)) & 1).astype(bool).reshape(Q, P, P)
        return masks, vals

    def optimum(self, num_pairs: int, same_class: str = "forced", direction: str = "min",
                exact_count: bool = True) -> OptimumResult:
        """Global optimum of the patch-only fitness over individuals of ``num_pairs`` pairs.

        Per pair the best mask (``best_masks``: closed form for a linear table, enumeration for an interaction
        table); then, with the same-class pairs
        ``forced`` (all ``K`` always present), ``allowed`` or ``excluded``, the remaining slots take the best
        remaining pairs. ``exact_count=False`` allows fewer than ``num_pairs`` pairs (the fitness is a mean,
        so the optimum then keeps only the pairs that beat the running mean).
        """
        if self.image_weight != 0.0:
            raise ValueError("optimum: the image-level term is not separable into cells; use image_weight = 0")
        check_choice("same_class", same_class, SAME_CLASS)
        masks, vals = self.best_masks(direction)
        forced, optional = slot_pools(self.num_classes, same_class)
        check_num_pairs(num_pairs, self.num_classes, same_class)
        sign = 1.0 if direction == "min" else -1.0
        order = optional[np.argsort(sign * vals[optional], kind="stable")]
        free = num_pairs - len(forced)
        if exact_count:
            chosen = np.concatenate([forced, order[:free]])
        else:
            base = vals[forced].sum()
            best, best_m = None, 0
            csum = np.concatenate([[0.0], np.cumsum(vals[order[:free]])])
            for mcount in range(0 if len(forced) else 1, free + 1):
                f = (base + csum[mcount]) / (len(forced) + mcount)
                if best is None or sign * f < sign * best:
                    best, best_m = f, mcount
            chosen = np.concatenate([forced, order[:best_m]])
        chosen = chosen.astype(np.int64)
        return OptimumResult(float(vals[chosen].mean()), chosen, masks[chosen])



def random_population(num_individuals: int, num_pairs: int, fitness: CachedFitness, same_class: str = "forced",
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random population: ``pairs (I, N)`` int64 and ``masks (I, N, P, P)`` bool, as the search initialises it."""
    rng = np.random.default_rng(seed)
    forced, optional = slot_pools(fitness.num_classes, same_class)
    check_num_pairs(num_pairs, fitness.num_classes, same_class)
    genomes = [random_genome(rng, forced, optional, num_pairs, fitness.grid_size) for _ in range(num_individuals)]
    return (torch.from_numpy(np.stack([g[0] for g in genomes])), torch.from_numpy(np.stack([g[1] for g in genomes])))



__all__ = ["MAX_ENUMERATED_GRID", "CachedFitness", "OptimumResult", "random_population"]
