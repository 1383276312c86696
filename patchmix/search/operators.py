"""The genetic search's individual and its variation operators (paper section 2.3), in numpy: no DEAP here
(:mod:`.genetic` registers them in its DEAP toolbox and makes the DEAP individual classes from :class:`Genome`).

Individual. ``N`` slots, each an active class pair (an id of ``pair_classes(K)``) with a ``P x P`` mask:
``pairs (N,)`` int64 and ``masks (N, P, P)`` bool numpy arrays. With same-class pairs ``"forced"`` the first ``K``
slots hold ``(c, c)`` for every class (their masks are still searched); ``"allowed"`` lets them compete with the
other pairs; ``"excluded"`` never uses them. Every slot is active, so an individual has exactly ``N`` (at most
``N``, as the paper asks) distinct pairs: the fitness is a mean over pairs, and letting the count shrink would make
a single pair optimal.

Operators (each shown by a test in ``tests/test_search.py``; ``rng`` is a numpy ``Generator``; each changes its
individuals in place and returns them, as DEAP's ``varAnd`` expects):

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
"""

from __future__ import annotations

import numpy as np

from .pairs import pair_classes, pair_id


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


__all__ = ["Genome", "PairNeighbours", "clone", "coin_flips", "crossover", "flip_heads", "flip_tails", "random_tails",
           "shared_slots", "transpose"]
