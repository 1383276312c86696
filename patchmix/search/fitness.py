"""Fitness of guided-search individuals: the cache of a trained patch-head model, the cached (batched)
fitness, the exact fitness that composes real images, their rank correlation, and the per-pair optimum.

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

:class:`ExactFitness` runs ``f_T`` on the composed images themselves: the ground truth both tables approximate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..choices import DIRECTIONS, OBJECTIVES, SAME_CLASS, check_choice
from ..files import torch_save
from ..ops.population_fitness import population_fitness
from .pairs import check_num_pairs, default_num_pairs, pair_classes, pair_id, random_genome, slot_pools
from .scoring import composed_scores, model_device, split_outputs

# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------


@dataclass
class CachedLogits:
    """Per-patch logits of a trained patch-head model over a validation set.

    Attributes:
        logits: ``(V, P*P, K)`` patch logits, row-major patches, float16 (default storage) or float32.
        labels: int64 ``(V,)`` class of each validation image.
        grid_size: ``P``.
        class_names: optional names of the ``K`` classes.

    Memory: ``V * P*P * K * itemsize`` bytes, e.g. CIFAR-100 (``V = 10000``, ``P = 4``, ``K = 100``): 32 MB in
    float16, 64 MB in float32; ImageNet (``V = 50000``, ``K = 1000``): 1.6 GB in float16. The search itself
    keeps only ``V x P*P`` scores and the ``(Q, P*P, 2)`` table (``Q = K (K+1) / 2``: 0.65 MB at K = 100).
    """

    logits: Tensor
    labels: Tensor
    grid_size: int
    class_names: list[str] | None = None

    def __post_init__(self):
        if self.logits.dim() != 3 or self.logits.shape[1] != self.grid_size ** 2:
            raise ValueError(
                f"CachedLogits: logits must be (V, P*P, K) with P = {self.grid_size}, got {tuple(self.logits.shape)}"
            )
        if not self.logits.is_floating_point():
            raise ValueError(f"CachedLogits: logits must be floating, got {self.logits.dtype}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.logits.shape[0],):
            raise ValueError(
                f"CachedLogits: labels must be int64 (V,) = ({self.logits.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        K = self.logits.shape[2]
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= K):
            raise ValueError(f"CachedLogits: labels must lie in [0, {K}) for {K}-class logits")
        if self.class_names is not None and len(self.class_names) != K:
            raise ValueError(f"CachedLogits: {len(self.class_names)} class names for {K} classes")

    @property
    def num_classes(self) -> int:
        return self.logits.shape[2]

    @property
    def num_images(self) -> int:
        return self.logits.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by ``logits`` and ``labels``."""
        return self.logits.numel() * self.logits.element_size() + self.labels.numel() * 8

    @classmethod
    @torch.no_grad()
    def from_model(
        cls,
        model: nn.Module,
        images,
        labels: Tensor | None = None,
        *,
        batch_size: int = 256,
        dtype: torch.dtype = torch.float16,
        device=None,
        grid_size: int | None = None,
        class_names: list[str] | None = None,
    ) -> CachedLogits:
        """One forward pass of ``model`` (eval mode, no grad) over the validation set.

        Args:
            model: returns ``(image_logits (N, K), patch_logits (N, K, P, P) or (N, P*P, K))``.
            images: ``(V, C, H, W)`` tensor (then ``labels (V,)`` int64), or an iterable of ``(x, y)`` batches.
            batch_size: images per forward pass when ``images`` is a tensor.
            dtype: storage dtype of the cache (float16 halves the memory; scores are computed in float32).
            device: where the model runs (default: the device of its first parameter, else CPU).
            grid_size: expected ``P`` (checked against the model's output when given).
        """
        if batch_size < 1:
            raise ValueError(f"CachedLogits.from_model: batch_size must be >= 1, got {batch_size}")
        if not dtype.is_floating_point:
            raise ValueError(f"CachedLogits.from_model: dtype must be floating, got {dtype}")
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        if isinstance(images, Tensor):
            if labels is None or not isinstance(labels, Tensor) or labels.shape != (images.shape[0],):
                raise ValueError("CachedLogits.from_model: labels must be an int64 tensor (V,) matching images")
            batches = ((images[s:s + batch_size], labels[s:s + batch_size]) for s in range(0, images.shape[0], batch_size))
        else:
            if labels is not None:
                raise ValueError("CachedLogits.from_model: pass labels only with an images tensor, not with a loader")
            batches = images
        chunks, ys = [], []
        try:
            for x, y in batches:
                patch = split_outputs(model(x.to(device)), grid_size)
                grid_size = math.isqrt(patch.shape[1])
                chunks.append(patch.to("cpu", dtype))
                ys.append(torch.as_tensor(y).to("cpu", torch.int64))
        finally:
            model.train(was_training)
        if not chunks:
            raise ValueError("CachedLogits.from_model: the validation set is empty")
        return cls(torch.cat(chunks), torch.cat(ys), grid_size, class_names)

    def patch_scores(self, objective: str = "logprob") -> Tensor:
        """``(V, P*P)`` float64 score of every cached patch against its image's label."""
        check_choice("objective", objective, OBJECTIVES)
        scores = []
        for s in range(0, self.num_images, 2048):  # float64 chunks: bounded extra memory
            z = self.logits[s:s + 2048].double()
            y = self.labels[s:s + 2048]
            if objective == "logprob":
                sc = torch.log_softmax(z, -1).gather(-1, y[:, None, None].expand(-1, z.shape[1], 1))[..., 0]
            else:
                sc = (z.argmax(-1) == y[:, None]).float()
            scores.append(sc.double())
        return torch.cat(scores)

    def save(self, path) -> None:
        torch_save({"logits": self.logits, "labels": self.labels, "grid_size": self.grid_size,
                    "class_names": self.class_names}, path)  # atomic; load() reads it with weights_only=True

    @classmethod
    def load(cls, path) -> CachedLogits:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(d["logits"], d["labels"], int(d["grid_size"]), d.get("class_names"))


def draw_pairs(labels: Tensor, num_classes: int, num_draws: int, seed: int) -> Tensor:
    """``S`` validation pairs ``(a, b)`` per class pair, uniformly with replacement, fixed by ``seed``:
    int64 ``(Q, S, 2)`` indices into ``labels (V,)``, ``a`` of the pair's first class ``c_i``, ``b`` of ``c_j``."""
    K, S = num_classes, num_draws
    lab = labels.numpy()
    counts = np.bincount(lab, minlength=K)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)[:5].tolist()
        raise ValueError(f"CachedFitness: classes {missing} have no validation image; every class needs one")
    order = np.argsort(lab, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cls = pair_classes(K).numpy()
    u = np.random.default_rng(seed).random((cls.shape[0], S, 2))
    which = cls[:, None, :]  # (Q, 1, 2)
    pos = np.minimum((u * counts[which]).astype(np.int64), counts[which] - 1)
    return torch.from_numpy(order[starts[which] + pos].astype(np.int64))


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
    def table_kind(self) -> str:
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
        if self.table_kind != "linear":
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
        if self.table_kind == "linear":
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


# --------------------------------------------------------------------------------------------------
# exact fitness and rank correlation
# --------------------------------------------------------------------------------------------------


class ExactFitness:
    """Fitness with real images: each draw ``(a, b)`` is composed with ``patchmix.ops.grid_mix`` and run
    through ``model`` (:func:`patchmix.search.scoring.composed_scores`); patch ``n`` is scored against its patch
    target with the fitness's objective, and the image-level term (when ``fitness.image_weight != 0``) scores
    the model's image logits against the soft label with the exact pixel ``lam``. The ground truth the cached
    tables approximate, and the paper's own fitness: the search can use it directly (``search.fitness = exact``,
    ``table_kind == "exact"``), at ``I * N * S`` forward passes per generation (split across the ranks under
    ``torchrun``).

    ``__call__(pairs (I, N), masks (I, N, P, P)) -> (I,)`` float64; :meth:`per_draw` keeps the draws apart.
    Cost: ``I * N_active * S`` forward passes.

    Args:
        model: ``f_T``; images: the cached validation set ``(V, C, H, W)``, float in ``[0, 1]`` or uint8.
        fitness: gives the objective, the image weight, the pairs' classes and (by default) the draws.
        draws: int64 ``(Q, S, 2)`` draws to compose instead of ``fitness.draws``: independent draws
            (:func:`draw_pairs` with another seed) score a proxy on images it was not fitted on.
    """

    table_kind = "exact"

    def __init__(self, model: nn.Module, images: Tensor, fitness: CachedFitness, *, draws: Tensor | None = None,
                 batch_size: int = 256, device=None):
        if images.dim() != 4 or images.shape[0] != fitness.cache.num_images:
            raise ValueError(
                f"ExactFitness: images must be the cached validation set (V, C, H, W) with V = "
                f"{fitness.cache.num_images}, got {tuple(images.shape)}"
            )
        draws = fitness.draws if draws is None else draws
        if draws.dtype != torch.int64 or draws.dim() != 3 or draws.shape[0] != fitness.num_pairs or draws.shape[2] != 2:
            raise ValueError(f"ExactFitness: draws must be int64 (Q, S, 2) with Q = {fitness.num_pairs}, got "
                             f"{draws.dtype} {tuple(draws.shape)}")
        self.model, self.images, self.fitness, self.draws = model, images, fitness, draws
        self.batch_size = int(batch_size)
        self.device = model_device(model, device)

    # what the search reads of a fitness: the base fitness's classes, cache and settings
    cache = property(lambda self: self.fitness.cache)
    classes = property(lambda self: self.fitness.classes)
    objective = property(lambda self: self.fitness.objective)
    image_weight = property(lambda self: self.fitness.image_weight)
    seed = property(lambda self: self.fitness.seed)
    num_classes = property(lambda self: self.fitness.num_classes)
    num_pairs = property(lambda self: self.fitness.num_pairs)
    grid_size = property(lambda self: self.fitness.grid_size)

    @property
    def num_draws(self) -> int:
        return self.draws.shape[1]

    def fingerprint(self) -> bytes:
        """What a search checkpoint must match on resume: the draws, the settings and ``f_T``'s weights."""
        parts = [self.draws.numpy().tobytes(), f"{self.objective}|{self.image_weight}|{self.grid_size}".encode()]
        parts += [t.detach().cpu().contiguous().numpy().tobytes() for t in self.model.state_dict().values()]
        return b"".join(parts)

    def per_draw(self, pairs, masks) -> Tensor:
        """``(I, S)`` float64: per individual and draw, the mean over its active slots of the composed sample's
        score (NaN for an individual without an active slot)."""
        pairs = torch.as_tensor(pairs).cpu()
        masks = torch.as_tensor(masks).cpu()
        n_ind = masks.shape[0]
        f, S = self.fitness, self.num_draws
        ii, kk = torch.nonzero(pairs >= 0, as_tuple=True)
        q = pairs[ii, kk]
        rep = lambda t: t.repeat_interleave(S, 0)  # noqa: E731  (one row per slot and draw)
        scores, image = composed_scores(
            self.model, self.images, self.draws[q, :, 0].reshape(-1), self.draws[q, :, 1].reshape(-1),
            rep(masks[ii, kk]), rep(f.classes[q, 0]), rep(f.classes[q, 1]), objective=f.objective,
            image_term=f.image_weight != 0.0, batch_size=self.batch_size, device=self.device)
        per_sample = scores.mean(-1)
        if image is not None:
            per_sample = per_sample + f.image_weight * image
        total = torch.zeros(n_ind, S, dtype=torch.float64).index_add_(0, ii, per_sample.reshape(-1, S))
        count = torch.zeros(n_ind, dtype=torch.float64).index_add_(0, ii, torch.ones(len(ii), dtype=torch.float64))
        return total / count[:, None]

    def __call__(self, pairs, masks) -> Tensor:
        return self.per_draw(pairs, masks).mean(-1)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def rank_correlation(x, y) -> float:
    """Spearman rank correlation of two 1-D sequences (average ranks for ties; NaN if one is constant)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape or x.size < 2:
        raise ValueError(f"rank_correlation: need two sequences of the same length >= 2, got {x.size} and {y.size}")
    rx, ry = _ranks(x) - (x.size + 1) / 2.0, _ranks(y) - (y.size + 1) / 2.0
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def random_population(num_individuals: int, num_pairs: int, fitness: CachedFitness, same_class: str = "forced",
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """A random population: ``pairs (I, N)`` int64 and ``masks (I, N, P, P)`` bool, as the search initialises it."""
    rng = np.random.default_rng(seed)
    forced, optional = slot_pools(fitness.num_classes, same_class)
    check_num_pairs(num_pairs, fitness.num_classes, same_class)
    genomes = [random_genome(rng, forced, optional, num_pairs, fitness.grid_size) for _ in range(num_individuals)]
    return (torch.from_numpy(np.stack([g[0] for g in genomes])), torch.from_numpy(np.stack([g[1] for g in genomes])))


def fitness_rank_correlation(cached: CachedFitness, exact: ExactFitness, population_size: int = 32,
                             num_pairs: int | None = None, same_class: str = "forced", seed: int = 0) -> dict:
    """Spearman correlation between cached and exact fitness over a random population.

    Returns ``{"spearman": float, "cached": (I,) ndarray, "exact": (I,) ndarray}``.
    """
    if num_pairs is None:
        num_pairs = default_num_pairs(cached.num_classes, same_class)
    pairs, masks = random_population(population_size, num_pairs, cached, same_class, seed)
    c = cached(pairs, masks).double().cpu().numpy()
    e = exact(pairs, masks).numpy()
    return {"spearman": rank_correlation(c, e), "cached": c, "exact": e}
