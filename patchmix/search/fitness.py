"""Fitness of guided-search individuals: the cache of a trained patch-head model, the cached (batched)
fitness, the exact fitness that composes real images, their rank correlation, and the closed-form optimum.

Pairs are the ``Q = K (K + 1) / 2`` unordered class pairs of :mod:`.pairs`.

Cached fitness (docs/semantics.md, "The cached fitness"). ``CachedFitness`` draws, once per search and from its seed,
``S`` validation pairs ``(a, b)`` per class pair (``a`` of class ``c_i``, ``b`` of ``c_j``, uniformly with
replacement). Patch ``n`` of a composed sample is scored with the cached prediction of its source image at
patch ``n`` against the source's label: ``objective="logprob"`` -> ``log_softmax(logits)[label]``,
``"accuracy"`` -> ``1[argmax == label]``. The fitness of an individual is the mean over its active pairs,
the draws and the ``P*P`` patches, plus optionally ``image_weight`` times an image-level term (see
``patchmix.ops.population_fitness``). Because the patch term is linear in the masks, it is precomputed once
into ``table (Q, P*P, 2)`` (mean over draws per pair, cell and source), and every generation costs one call of
``patchmix.ops.population_fitness`` (``I * N * P*P`` table lookups). ``exact_reference`` recomputes the same
number by composing every draw explicitly (for tests and doubts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..choices import DIRECTIONS, OBJECTIVES, SAME_CLASS, check_choice
from ..files import torch_save
from ..ops import grid_mix
from ..ops.population_fitness import population_fitness
from .pairs import check_num_pairs, default_num_pairs, pair_classes, pair_id, random_genome, slot_pools

# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------


def _split_outputs(out, grid_size: int | None) -> Tensor:
    """``(image_logits, patch_logits)`` -> patch logits as ``(N, P*P, K)`` (a view when possible)."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ValueError(
            "CachedLogits.from_model: the model must return (image_logits (N, K), patch_logits (N, K, P, P) or "
            f"(N, P*P, K)), got {type(out).__name__}"
        )
    image_logits, patch = out
    if patch.dim() == 4:  # (N, K, P, P), the head's natural layout
        if patch.shape[2] != patch.shape[3]:
            raise ValueError(f"CachedLogits.from_model: patch logits (N, K, P, P) must be square, got {tuple(patch.shape)}")
        patch = patch.permute(0, 2, 3, 1).reshape(patch.shape[0], -1, patch.shape[1])
    elif patch.dim() != 3:
        raise ValueError(
            f"CachedLogits.from_model: patch logits must be (N, K, P, P) or (N, P*P, K), got {tuple(patch.shape)}"
        )
    P = math.isqrt(patch.shape[1])
    if P * P != patch.shape[1]:
        raise ValueError(f"CachedLogits.from_model: {patch.shape[1]} patches is not a square grid P*P")
    if grid_size is not None and P != grid_size:
        raise ValueError(f"CachedLogits.from_model: the model has a {P}x{P} grid, expected grid_size = {grid_size}")
    if image_logits.shape[-1] != patch.shape[-1]:
        raise ValueError(
            f"CachedLogits.from_model: image logits have {image_logits.shape[-1]} classes, patch logits {patch.shape[-1]}"
        )
    return patch


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
                patch = _split_outputs(model(x.to(device)), grid_size)
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


def synthetic_cache(
    num_classes: int, per_class: int = 50, grid_size: int = 4, seed: int = 0, dtype: torch.dtype = torch.float16
) -> CachedLogits:
    """A synthetic cache for benchmarks and tests: every class has its own per-cell difficulty, and each
    class is confused with a few "neighbour" classes, so pairs and cells differ in fitness."""
    g = torch.Generator().manual_seed(seed)
    K, PP = num_classes, grid_size * grid_size
    labels = torch.arange(K).repeat_interleave(per_class)
    V = labels.numel()
    difficulty = torch.rand(K, PP, generator=g) * 3.0  # margin of the true class per class and cell
    neighbour = torch.randn(K, K, generator=g)
    logits = torch.randn(V, PP, K, generator=g)
    logits += 0.5 * neighbour[labels][:, None, :]
    logits[torch.arange(V), :, labels] += difficulty[labels] + 0.5 * torch.randn(V, PP, generator=g)
    return CachedLogits(logits.to(dtype), labels, grid_size)


# --------------------------------------------------------------------------------------------------
# cached fitness
# --------------------------------------------------------------------------------------------------


@dataclass
class OptimumResult:
    """Closed-form optimum of the linear (patch-only) fitness: ``fitness``, pair ids ``(M,)`` and masks ``(M, P, P)``."""

    fitness: float
    pairs: np.ndarray
    masks: np.ndarray


@dataclass
class CachedFitness:
    """Batched fitness on a :class:`CachedLogits`, with the draws fixed once from ``seed``.

    ``__call__(pairs (I, N) int64, masks (I, N, P, P) bool) -> (I,)`` float64 tensor. Raw scores: higher means
    the cached model finds the composed samples easier; the search minimises or maximises them.

    Args:
        cache: the validation cache.
        num_draws: ``S`` validation pairs ``(a, b)`` per class pair.
        objective: ``"logprob"`` (mean patch log-probability of the source label, ``-L_P / P^2``) or
            ``"accuracy"`` (patch accuracy).
        image_weight: weight of the image-level term (0: patch-only, linear, with a closed-form optimum).
            Not linear in the masks, so it is recomputed per draw: ``I * N * S * P*P * K`` multiply-adds per
            generation (5e9 at CIFAR-100 scale with S = 32: minutes per generation on 2 CPU cores; use a
            few draws, or CUDA), against ``I * N * P*P`` table lookups (1.6e6, ~2 ms) for the patch term.
        seed: seed of the draws.
        dtype: dtype of the table handed to the op (float64 default: exact ties, reproducible ranking).
        device: where the op runs (CPU default; CUDA runs the Triton kernel).
    """

    cache: CachedLogits
    num_draws: int = 32
    objective: str = "logprob"
    image_weight: float = 0.0
    seed: int = 0
    dtype: torch.dtype = torch.float64
    device: torch.device | str = "cpu"
    table: Tensor = field(init=False, repr=False)
    draws: Tensor = field(init=False, repr=False)
    classes: Tensor = field(init=False, repr=False)

    def __post_init__(self):
        check_choice("objective", self.objective, OBJECTIVES)
        if self.num_draws < 1:
            raise ValueError(f"CachedFitness: num_draws must be >= 1, got {self.num_draws}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"CachedFitness: dtype must be float32 or float64, got {self.dtype}")
        K, S = self.cache.num_classes, self.num_draws
        labels = self.cache.labels.numpy()
        counts = np.bincount(labels, minlength=K)
        if (counts == 0).any():
            missing = np.flatnonzero(counts == 0)[:5].tolist()
            raise ValueError(f"CachedFitness: classes {missing} have no validation image; every class needs one")
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.classes = pair_classes(K)
        cls = self.classes.numpy()
        rng = np.random.default_rng(self.seed)
        u = rng.random((cls.shape[0], S, 2))
        which = np.stack([cls[:, 0], cls[:, 1]], 1)[:, None, :]  # (Q, 1, 2)
        pos = np.minimum((u * counts[which]).astype(np.int64), counts[which] - 1)
        self.draws = torch.from_numpy(order[starts[which] + pos].astype(np.int64))  # (Q, S, 2)
        scores = self.cache.patch_scores(self.objective)  # (V, PP) float64
        table = torch.stack([scores[self.draws[..., 1]].mean(1), scores[self.draws[..., 0]].mean(1)], -1)
        self.table = table.to(self.device, self.dtype).contiguous()  # (Q, PP, 2)
        self._logits = None
        if self.image_weight != 0.0:
            self._logits = self.cache.logits.to(self.device, self.dtype).contiguous()
        self._draws_dev = self.draws.to(self.device)
        self._classes_dev = self.classes.to(self.device)

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
        then average. Memory ``I * N * S * P*P * K``: for small checks only. float64 ``(I,)``."""
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

    def best_masks(self, direction: str = "min") -> tuple[np.ndarray, np.ndarray]:
        """Per pair, the best mask and its value: ``masks (Q, P, P)`` bool, ``values (Q,)`` float64.
        Linear objective: each cell independently takes the side with the lower (``min``) or higher score."""
        check_choice("direction", direction, DIRECTIONS)
        t = self.table.double().cpu().numpy()
        P = self.grid_size
        take_a = t[..., 1] < t[..., 0] if direction == "min" else t[..., 1] > t[..., 0]
        vals = np.where(take_a, t[..., 1], t[..., 0]).mean(-1)
        return take_a.reshape(-1, P, P), vals

    def optimum(self, num_pairs: int, same_class: str = "forced", direction: str = "min",
                exact_count: bool = True) -> OptimumResult:
        """Global optimum of the patch-only fitness over individuals of ``num_pairs`` pairs.

        Per pair every cell takes its better side (``best_masks``); then, with the same-class pairs
        ``forced`` (all ``K`` always present), ``allowed`` or ``excluded``, the remaining slots take the best
        remaining pairs. ``exact_count=False`` allows fewer than ``num_pairs`` pairs (the fitness is a mean,
        so the optimum then keeps only the pairs that beat the running mean).
        """
        if self.image_weight != 0.0:
            raise ValueError("optimum: the image-level term is not linear in the masks; use image_weight = 0")
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
    """Fitness with real images: each draw ``(a, b)`` of :class:`CachedFitness` is composed with
    ``patchmix.ops.grid_mix`` and run through ``model``; patch ``n`` is scored against its patch target with
    the same objective, and the image-level term (when ``fitness.image_weight != 0``) scores the model's
    image logits against the soft label with the exact pixel ``lam``. Measures how faithful the cache is.

    ``__call__(pairs (I, N), masks (I, N, P, P)) -> (I,)`` float64. Cost: ``I * N_active * S`` forward passes
    (build the ``CachedFitness`` with a smaller ``num_draws`` to make it cheaper; both then use the same draws).
    """

    def __init__(self, model: nn.Module, images: Tensor, fitness: CachedFitness, *, batch_size: int = 256,
                 device=None):
        if images.dim() != 4 or images.shape[0] != fitness.cache.num_images:
            raise ValueError(
                f"ExactFitness: images must be the cached validation set (V, C, H, W) with V = "
                f"{fitness.cache.num_images}, got {tuple(images.shape)}"
            )
        self.model, self.images, self.fitness, self.batch_size = model, images, fitness, int(batch_size)
        if device is None:
            p = next(iter(model.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, pairs, masks) -> Tensor:
        pairs = torch.as_tensor(pairs).cpu()
        masks = torch.as_tensor(masks).cpu()
        n_ind, P = masks.shape[0], masks.shape[2]
        f = self.fitness
        S = f.num_draws
        ii, kk = torch.nonzero(pairs >= 0, as_tuple=True)
        q = pairs[ii, kk]
        a = f.draws[q, :, 0].reshape(-1)  # (M * S,)
        b = f.draws[q, :, 1].reshape(-1)
        m = masks[ii, kk].repeat_interleave(S, 0)  # (M * S, P, P)
        owner = ii.repeat_interleave(S)
        ca = f.classes[q, 0].repeat_interleave(S)
        cb = f.classes[q, 1].repeat_interleave(S)
        was_training = self.model.training
        self.model.eval()
        per_sample = torch.empty(a.numel(), dtype=torch.float64)
        try:
            for s in range(0, a.numel(), self.batch_size):
                sl = slice(s, s + self.batch_size)
                x, lam = grid_mix(self.images, m[sl], a[sl], b[sl])
                image_logits, patch = self.model(x.to(self.device))
                patch = _split_outputs((image_logits, patch), P).double().cpu()
                target = torch.where(m[sl].reshape(-1, P * P), ca[sl, None], cb[sl, None])
                if f.objective == "logprob":
                    sc = torch.log_softmax(patch, -1).gather(-1, target[..., None])[..., 0]
                else:
                    sc = (patch.argmax(-1) == target).double()
                val = sc.mean(-1)
                if f.image_weight != 0.0:
                    lp = torch.log_softmax(image_logits.double().cpu(), -1)
                    lam64 = lam.double()
                    img = lam64 * lp.gather(1, ca[sl, None])[:, 0] + (1 - lam64) * lp.gather(1, cb[sl, None])[:, 0]
                    val = val + f.image_weight * img
                per_sample[sl] = val
        finally:
            self.model.train(was_training)
        total = torch.zeros(n_ind, dtype=torch.float64).index_add_(0, owner, per_sample)
        count = torch.zeros(n_ind, dtype=torch.float64).index_add_(0, owner, torch.ones_like(per_sample))
        return total / count


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
