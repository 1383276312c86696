"""The cache of a trained patch-head model's logits over the validation split (:class:`CachedLogits`) and the
search's validation draws (:func:`draw_pairs`): what the cached and the exact fitness are built on.

Pairs are the ``Q = K (K + 1) / 2`` unordered class pairs of :mod:`.pairs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..choices import OBJECTIVES, check_choice
from ..files import torch_save
from .pairs import pair_classes
from .scoring import split_outputs


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


def distinct_pairs(labels: Tensor, num_classes: int) -> Tensor:
    """``D_q = n_i * n_j``: the distinct ordered validation pairs ``(a, b)`` each class pair ``q = (c_i, c_j)``
    offers (``n_c`` images of class ``c``), int64 ``(Q,)``."""
    counts = torch.bincount(labels, minlength=num_classes)
    cls = pair_classes(num_classes)
    return counts[cls[:, 0]] * counts[cls[:, 1]]


def draw_pairs(labels: Tensor, num_classes: int, num_draws: int, seed: int) -> Tensor:
    """``S`` validation pairs ``(a, b)`` per class pair, fixed by ``seed``: int64 ``(Q, S, 2)`` indices into
    ``labels (V,)``, ``a`` of the pair's first class ``c_i``, ``b`` of ``c_j``.

    A pair that offers more than ``S`` distinct image pairs (:func:`distinct_pairs`) draws them uniformly with
    replacement. A pair that offers ``D_q <= S`` enumerates all of them, in an order fixed by ``(seed, q)``, and
    repeats that cycle: ``draws[q, s] == draws[q, s % D_q]``. Drawing with replacement from so few would repeat
    image pairs by chance and miss others; the cycle covers each one, and whatever composes the draws computes
    only the first ``D_q`` (:func:`draw_period`)."""
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
    nb = counts[cls[:, 1]]
    for q in np.flatnonzero(counts[cls[:, 0]] * nb <= S):  # the draws would repeat: enumerate the pairs
        D = int(counts[cls[q, 0]] * nb[q])
        cycle = np.random.default_rng([seed, int(q)]).permutation(D)[np.arange(S) % D]
        pos[q] = np.stack([cycle // nb[q], cycle % nb[q]], -1)
    return torch.from_numpy(order[starts[which] + pos].astype(np.int64))


def draw_period(draws: Tensor) -> Tensor:
    """Per pair, the smallest ``p`` with ``draws[q, s] == draws[q, s % p]`` for every ``s``: int64 ``(Q,)``.
    Compositions of draw ``s >= p`` repeat those of draw ``s % p``, so only the first ``p`` need ``f_T``."""
    if draws.dim() != 3 or draws.shape[2] != 2:
        raise ValueError(f"draw_period: draws must be (Q, S, 2), got {tuple(draws.shape)}")
    Q, S = draws.shape[:2]
    period = torch.full((Q,), S, dtype=torch.int64)
    todo = torch.ones(Q, dtype=torch.bool)
    for p in range(1, S):
        cand = torch.nonzero(todo & (draws[:, p] == draws[:, 0]).all(-1))[:, 0]  # a cycle of p starts again at p
        if len(cand):
            d = draws[cand]
            ok = (d == d[:, torch.arange(S) % p]).all(-1).all(-1)
            period[cand[ok]] = p
            todo[cand[ok]] = False
    return period


__all__ = ["CachedLogits", "distinct_pairs", "draw_pairs", "draw_period"]
