"""Guided PatchMix (paper sections 2.3-2.4, phases three and four): training samples from a searched policy.

* :class:`GuidedPatchMix` draws guided samples: a policy pair ``(c_i, c_j)`` (uniformly, or by
  ``pair_weights``), one pool image of class ``c_i`` and one of ``c_j`` (uniformly), composed with that
  pair's mask by ``patchmix.ops.grid_mix`` with ``index_a``/``index_b`` into the pool. True cells come from the
  ``c_i`` image, which is ``target_a`` of the returned :class:`~patchmix.MixedBatch`.
* Phase four's batch, built in one place: :class:`GuidedBatchSampler` lists a batch's dataset indices and
  :class:`GuidedCollate` composes the loaded images into one :class:`~patchmix.MixedBatch` with three parts,
  in this order: original samples (``lam = 1``), Random-PatchMix samples (mixed within that part) and guided
  samples (``L_O`` over all of them). :func:`phase_four_counts` splits a batch into the three parts. The
  trainer's loader and :func:`guided_loader` run ``GuidedCollate.mix`` inside a
  :class:`patchmix.mixing.collate.MixCollate` (a generator per batch or per worker, never one shared by the workers).

A Random-PatchMix part of one sample is valid: like :class:`~patchmix.RandomPatchMix` on a batch of one, it
pairs the sample with itself (the image is unchanged and keeps its label). Counts are never adjusted.

Randomness comes from the ``torch.Generator`` passed in (draws are made on its device, indices returned on
the CPU; reproducible).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import PolicyError
from .mixing import checks
from .mixing.batch import MixedBatch
from .mixing.collate import MixCollate
from .mixing.mix import check_batch
from .mixing.mixers import RandomPatchMix
from .ops import grid_mix
from .search.policy import Policy


def phase_four_counts(batch: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """``(n_original, n_random, n_guided)`` of a phase-four batch of ``batch`` samples split by ``fractions``
    (``train.guided_fractions``, any non-negative scale), each part rounded, with at least one sample loaded
    from the dataset (an original or a random one) so that an epoch still walks the training set. ``batch >= 1``;
    ``fractions``: 3 finite numbers >= 0, not all 0."""
    batch = checks.integer("phase_four_counts", "batch", batch, low=1)
    f = checks.weights("phase_four_counts", "fractions (original, random, guided)", fractions, count=3)
    total = sum(f)
    n_orig = min(int(round(batch * f[0] / total)), batch)
    n_rand = min(int(round(batch * f[1] / total)), batch - n_orig)
    if n_orig + n_rand == 0:
        n_orig = 1 if f[0] > 0 or f[1] == 0 else 0
        n_rand = 1 - n_orig
    return n_orig, n_rand, batch - n_orig - n_rand


def _check_in_policy(slot: Tensor) -> None:
    """Every guided sample's ordered class pair is a policy pair (``slot >= 0``). On the CPU this raises
    :class:`PolicyError`; on an accelerator it queues a device-side assert instead of reading the device."""
    msg = "GuidedCollate: a guided pair is not in the policy; use GuidedBatchSampler's indices"
    if slot.device.type == "cpu":
        if bool((slot < 0).any()):
            raise PolicyError(msg)
    else:
        torch._assert_async((slot >= 0).all(), msg)


def concat_batches(batches: Sequence[MixedBatch], offsets: Sequence[int] | None = None) -> MixedBatch:
    """One :class:`MixedBatch` from several with grid masks of the same size (order kept); ``offsets``: where each
    part's input rows start (see :meth:`MixedBatch.cat`). Empty parts are dropped."""
    offsets = list(offsets) if offsets is not None else [0] * len(batches)
    kept = [(b, o) for b, o in zip(batches, offsets, strict=True) if len(b)]
    if not kept:
        raise ValueError("concat_batches: nothing to concatenate")
    if any(b.mask is None for b, _ in kept):
        raise ValueError("concat_batches: every part needs a grid mask (use MixedBatch.unmixed(x, y, grid_size))")
    return MixedBatch.cat([b for b, _ in kept], [o for _, o in kept])


class GuidedPatchMix(nn.Module):
    """Guided samples from a :class:`~patchmix.search.Policy`.

    Args:
        policy: the searched pairs and masks (``len(policy) = M`` pairs, ``P x P`` masks).
        labels: int64 ``(L,)`` labels of the pool the indices refer to (e.g. the whole training set).
            Every class used by the policy needs at least one image in the pool.
        pair_weights: optional ``(M,)`` non-negative sampling weights of the pairs (default uniform).
        generator: ``torch.Generator`` for reproducible draws (any device; indices come back on the CPU).

    ``sample(n) -> (slot (n,), index_a (n,), index_b (n,))``: pair slots of the policy and pool indices.
    ``forward(images (L, C, H, W), n) -> MixedBatch`` of ``n`` guided samples (``mask`` = the policy masks).
    """

    # the buffers registered in __init__ (nn.Module's __getattr__ would type them Tensor | Module)
    labels: Tensor
    pairs: Tensor
    masks: Tensor
    order: Tensor
    counts: Tensor
    starts: Tensor
    slot_of: Tensor

    def __init__(self, policy: Policy, labels: Tensor, *, pair_weights: Tensor | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not isinstance(policy, Policy):
            raise TypeError(f"GuidedPatchMix: policy must be a patchmix.search.Policy, got {type(policy).__name__}")
        if len(policy) == 0:
            raise PolicyError("GuidedPatchMix: the policy has no pairs")
        labels = torch.as_tensor(labels)
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(f"GuidedPatchMix: labels must be int64 (L,), got {labels.dtype} {tuple(labels.shape)}")
        K = policy.num_classes
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= K):
            raise PolicyError(f"GuidedPatchMix: labels must lie in [0, {K}) for the policy's {K} classes")
        labels = labels.cpu()
        counts = torch.bincount(labels, minlength=K)
        used = torch.unique(policy.pair_tensor())
        empty = used[counts[used] == 0]
        if empty.numel():
            names = [policy.class_names[int(c)] for c in empty[:5]]
            raise PolicyError(f"GuidedPatchMix: the pool has no image of classes {names} used by the policy")
        self.policy = policy
        self.grid_size = policy.grid_size
        self.generator = generator
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("pairs", policy.pair_tensor(), persistent=False)
        self.register_buffer("masks", policy.mask_tensor(), persistent=False)
        self.register_buffer("order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts, persistent=False)
        slot_of = torch.full((K, K), -1, dtype=torch.int64)
        slot_of[self.pairs[:, 0], self.pairs[:, 1]] = torch.arange(len(policy))
        self.register_buffer("slot_of", slot_of, persistent=False)
        if pair_weights is not None:
            w = torch.as_tensor(pair_weights, dtype=torch.float64).cpu()
            if w.shape != (len(policy),) or not bool(torch.isfinite(w).all()) or (w < 0).any() or not w.sum() > 0:
                raise ValueError(f"GuidedPatchMix: pair_weights must be ({len(policy)},) finite, non-negative and not "
                                 f"all zero, got {tuple(w.shape)} {w.tolist() if w.numel() <= 8 else ''}".rstrip())
            pair_weights = w
        self.pair_weights = pair_weights

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` guided draws: policy slots and pool indices ``index_a`` (class ``c_i``), ``index_b`` (``c_j``),
        int64 ``(n,)`` each, on the CPU; drawn from ``generator`` (default: the one given at construction)."""
        if n < 0:
            raise ValueError(f"GuidedPatchMix.sample: n must be >= 0, got {n}")
        g = generator if generator is not None else self.generator
        dev = g.device if g is not None else torch.device("cpu")  # draw where the generator lives
        M = len(self.policy)
        if self.pair_weights is None:
            slot = torch.randint(M, (n,), generator=g, device=dev).cpu()
        elif n:
            slot = torch.multinomial(self.pair_weights.to(dev), n, replacement=True, generator=g).cpu()
        else:
            slot = torch.zeros(0, dtype=torch.int64)
        pairs, counts, starts, order = (t.cpu() for t in (self.pairs, self.counts, self.starts, self.order))
        idx = []
        for side in (0, 1):
            c = pairs[slot, side]
            u = torch.rand(n, generator=g, dtype=torch.float64, device=dev).cpu()
            pos = torch.minimum((u * counts[c]).long(), counts[c] - 1)
            idx.append(order[starts[c] + pos])
        return slot, idx[0], idx[1]

    def compose(self, images: Tensor, slot: Tensor, index_a: Tensor, index_b: Tensor,
                labels: Tensor | None = None) -> MixedBatch:
        """Compose ``images[index_a]`` / ``images[index_b]`` with the masks of ``slot`` (one ``grid_mix`` call).
        ``labels``: labels of ``images`` (default: the pool labels given at construction)."""
        dev = images.device
        labels = self.labels if labels is None else labels
        mask = self.masks.to(dev)[slot.to(dev)]
        ia, ib = index_a.to(dev), index_b.to(dev)
        mixed, lam = grid_mix(images, mask, ia, ib)
        return MixedBatch(mixed, labels.to(dev)[ia], labels.to(dev)[ib], lam, mask, ia, ib)

    def forward(self, images: Tensor, n: int) -> MixedBatch:
        """``n`` guided samples composed from the pool ``images (L, C, H, W)`` (``L`` = ``len(labels)``)."""
        if images.dim() != 4 or images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"GuidedPatchMix: images must be the pool (L, C, H, W) with L = {self.labels.shape[0]}, "
                f"got {tuple(images.shape)}"
            )
        slot, ia, ib = self.sample(n)
        return self.compose(images, slot, ia, ib)

    def slots_for(self, target_a: Tensor, target_b: Tensor) -> Tensor:
        """Policy slot of each ordered class pair (``-1`` when the policy lacks it)."""
        return self.slot_of.to(target_a.device)[target_a, target_b]

    def extra_repr(self) -> str:
        return f"pairs={len(self.policy)}, grid_size={self.grid_size}, pool={self.labels.shape[0]}"


class GuidedBatchSampler(torch.utils.data.Sampler):
    """The dataset indices of phase-four batches: each batch lists ``n_original + n_random`` indices from
    ``order`` (the plain part), then ``n_guided`` indices of class-``c_i`` images and ``n_guided`` of
    class-``c_j`` images drawn by ``guided``. Use with :class:`GuidedCollate` (same counts).

    Args:
        guided: the guided sampler (its labels are the pool the indices refer to).
        counts: ``(n_original, n_random, n_guided)``, e.g. from :func:`phase_four_counts`.
        order: the plain parts' indices, consumed in order (an epoch's shard); default: a fresh permutation
            of the pool, drawn again when it runs out (no repeats within a pass).
        num_batches: ``len()``; default: the batches ``order`` fills (one pass over the pool without it),
            last incomplete batch dropped.
        generator: draws the permutations and the guided pairs (default: ``guided``'s generator).
    """

    def __init__(self, guided: GuidedPatchMix, counts: tuple[int, int, int], *, order: Tensor | None = None,
                 num_batches: int | None = None, generator: torch.Generator | None = None):
        n_o, n_r, n_g = (int(c) for c in counts)
        if min(n_o, n_r, n_g) < 0 or n_o + n_r + n_g == 0:
            raise ValueError(f"GuidedBatchSampler: counts must be three non-negative ints, not all 0, got {counts}")
        self.guided, self.counts, self.generator = guided, (n_o, n_r, n_g), generator
        self.order = None if order is None else torch.as_tensor(order, dtype=torch.int64)
        L = guided.labels.shape[0] if self.order is None else self.order.numel()
        plain = n_o + n_r
        if num_batches is None:
            num_batches = L // plain if plain else 1
        if num_batches < 1 or (self.order is not None and num_batches * plain > L):
            raise ValueError(f"GuidedBatchSampler: num_batches must be >= 1 and fit the order ({L} indices, {plain} "
                             f"per batch), got {num_batches}")
        self.num_batches = int(num_batches)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        n_o, n_r, n_g = self.counts
        plain = n_o + n_r
        g = self.generator if self.generator is not None else self.guided.generator
        L = self.guided.labels.shape[0]
        perm = self.order if self.order is not None else torch.zeros(0, dtype=torch.int64)
        pos = 0
        for _ in range(self.num_batches):
            if pos + plain > perm.numel():  # only without `order`: a (new) pass over the pool
                perm, pos = torch.randperm(L, generator=g), 0
            first = perm[pos:pos + plain]
            pos += plain
            _, ia, ib = self.guided.sample(n_g, g)
            yield torch.cat([first, ia, ib]).tolist()


class GuidedCollate:
    """Composes phase four's batch from the samples :class:`GuidedBatchSampler` listed: the original part
    (all-True masks), the Random-PatchMix part (mixed within itself by ``random_mixer``) and the guided part
    (each ``(c_i, c_j)`` pair of images composed with the policy's mask for that ordered pair).

    ``mix(x (n_o + n_r + 2 n_g, C, H, W), y (same,), generator=None) -> MixedBatch`` of ``n_o + n_r + n_g``
    samples (``generator``: the random part's draws, default ``random_mixer``'s own); calling the object on a list
    of ``(x, y)`` samples stacks them first (the ``collate_fn`` of a ``DataLoader``: a
    :class:`patchmix.mixing.collate.MixCollate` with ``seed``, so each worker draws its own stream).
    """

    def __init__(self, guided: GuidedPatchMix, counts: tuple[int, int, int], *,
                 random_mixer: RandomPatchMix | None = None, seed: int | None = None):
        self.guided, self.counts = guided, tuple(int(c) for c in counts)
        # default: draw from the guided sampler's generator, so a seeded loader is reproducible end to end
        self.random_mixer = random_mixer if random_mixer is not None else RandomPatchMix(
            guided.grid_size, generator=guided.generator)
        if self.random_mixer.grid_size != guided.grid_size:
            raise ValueError(f"GuidedCollate: random_mixer grid {self.random_mixer.grid_size} != policy grid {guided.grid_size}")
        if seed is None:
            seed = guided.generator.initial_seed() if guided.generator is not None else 0
        self.collate = MixCollate(self.mix, seed=seed)

    def mix(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> MixedBatch:
        n_o, n_r, n_g = self.counts
        if x.shape[0] != n_o + n_r + 2 * n_g or y.shape[0] != x.shape[0]:
            raise ValueError(f"GuidedCollate: expected {n_o + n_r + 2 * n_g} samples (counts {self.counts}), "
                             f"got {x.shape[0]} images and {y.shape[0]} labels")
        check_batch(x, y)
        parts, offsets = [], []
        if n_o:
            parts.append(MixedBatch.unmixed(x[:n_o], y[:n_o], self.guided.grid_size))
            offsets.append(0)
        if n_r:
            parts.append(self.random_mixer(x[n_o:n_o + n_r], y[n_o:n_o + n_r], generator=generator))
            offsets.append(n_o)
        if n_g:
            yg = y[n_o + n_r:]
            slot = self.guided.slots_for(yg[:n_g], yg[n_g:])
            _check_in_policy(slot)
            idx = torch.arange(n_g, device=x.device)
            parts.append(self.guided.compose(x[n_o + n_r:], slot, idx, idx + n_g, labels=yg))
            offsets.append(n_o + n_r)
        return concat_batches(parts, offsets)

    def unmixed(self, x: Tensor, y: Tensor) -> MixedBatch:
        """A plain batch (all-True masks): what phase four's loader serves after ``train.mix_off_epoch``."""
        return MixedBatch.unmixed(x, y, self.guided.grid_size)

    def __call__(self, samples) -> MixedBatch:
        return self.collate(samples)


def guided_loader(dataset, guided: GuidedPatchMix, counts: tuple[int, int, int], *, num_batches: int | None = None,
                 generator: torch.Generator | None = None, random_mixer: RandomPatchMix | None = None,
                 seed: int | None = None, **loader_kwargs) -> torch.utils.data.DataLoader:
    """A ``DataLoader`` over ``dataset`` (items ``(x, y)``; ``guided`` built on its labels) whose batches are
    :class:`MixedBatch` of ``counts = (n_original, n_random, n_guided)`` samples. The guided draws come from
    ``generator`` in the main process; the random part draws from a stream per worker seeded by ``seed``
    (default: ``generator``'s initial seed), so workers never repeat each other's masks."""
    sampler = GuidedBatchSampler(guided, counts, num_batches=num_batches, generator=generator)
    if seed is None and generator is not None:
        seed = generator.initial_seed()
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler,
                                       collate_fn=GuidedCollate(guided, counts, random_mixer=random_mixer, seed=seed),
                                       **loader_kwargs)


__all__ = ["GuidedBatchSampler", "GuidedCollate", "GuidedPatchMix", "guided_loader", "phase_four_counts"]
