"""The training methods (paper Table 1, and timm's recipe): what each step loads, how it mixes, and which
loss trains it.

* ``base``: no mixing; ``mixup``, ``cutmix``: the classic mixers; ``random``: Random PatchMix with the
  fused image + patch loss ``L_T`` (the paper's phase one); ``mix``: Mixup, CutMix and PatchMix chosen per sample
  (or per batch) by ``train.mix_weights``, ``L_T`` for its PatchMix samples and ``L_O`` for the others;
* ``guided``: phase four: each batch holds original, random-mixed and policy-guided samples, built by
  :class:`patchmix.guided.GuidedBatchSampler` (indices) and :class:`patchmix.guided.GuidedCollate` (mixing).

Every method goes through :class:`patchmix.PatchMixLoss`; all but ``random`` and ``mix`` use its image term ``L_O``
only. Every method takes the same number of steps of the same batch size (the same budget): an epoch of
``guided`` shows each training image as an original or random-mixed sample with probability
``(n_original + n_random) / B``; its guided samples are drawn from the whole training set. Mixing happens where
the batch is loaded (:class:`patchmix.mixing.collate.MixCollate`, in the DataLoader's workers when ``data.workers > 0``),
on uint8 images; from ``train.mix_off_epoch`` on every method trains on unmixed batches: one
:class:`patchmix.mixing.switch.MixSwitch` per training decides, and the epoch's index batches
(:meth:`Method.index_batches`), its collate and :meth:`Method.epoch` ask it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..choices import METHODS, MIX_METHODS, PATCH_SUPERVISED
from ..config import Config
from ..errors import ConfigError, PolicyError
from ..losses import PatchMixLoss
from ..mixing.batch import MixedBatch
from ..mixing.collate import MixCollate
from ..mixing.mix import Mix
from ..mixing.mixers import RandomPatchMix
from ..mixing.switch import MixSwitch
from .optim import lr_at
from .runtime import Runtime
from .streams import EpochStreams, loader_seed

Mixer = Callable[[Tensor, Tensor], MixedBatch]
Loss = Callable[[tuple, MixedBatch], Tensor]


def make_loss(method: str, cfg: Config) -> Loss:
    """``loss(model outputs, batch)``: ``L_T`` (image + patch terms) for ``random`` and ``mix``; ``L_O`` (the image
    term at full weight) for the others, whose patch head then gets no gradient."""
    t = cfg.train
    try:
        if method in PATCH_SUPERVISED:
            return PatchMixLoss(image_weight=t.image_weight, patch_weight=t.patch_weight,
                                label_smoothing=t.label_smoothing)
        image_loss = PatchMixLoss(image_weight=1.0, patch_weight=0.0, label_smoothing=t.label_smoothing)
    except ValueError as exc:  # a bad train.* setting (exit code 2), like make_mixer's
        raise ConfigError(f"method {method!r}: {exc}") from None
    return lambda outputs, batch: image_loss(outputs[0], batch)


def make_mixer(method: str, cfg: Config, generator: torch.Generator | None = None) -> Mixer:
    """``mix(x (B, C, H, W) uint8 or float, y (B,), generator=None) -> MixedBatch`` for the batch-local methods
    (``base``, ``mixup``, ``cutmix``, ``random``, ``mix``), a :class:`patchmix.Mix` of ``train.*`` (``base``:
    the batch unmixed, with an all-True grid); ``guided`` needs a :class:`Method`."""
    t, P = cfg.train, cfg.model.grid_size
    if method == "base":
        return functools.partial(MixedBatch.unmixed, grid_size=P)
    if method == "guided":
        raise ConfigError("method 'guided' mixes whole phase-four batches: use patchmix.training.Method")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    alphas = {m: t.alpha if getattr(t, f"{m}_alpha") is None else getattr(t, f"{m}_alpha") for m in MIX_METHODS}
    on = {"mixup": ("mixup",), "cutmix": ("cutmix",), "random": ("patchmix",), "mix": MIX_METHODS}[method]
    weights = {m: w for m, w in zip(MIX_METHODS, t.mix_weights, strict=True) if m in on and alphas[m] > 0}
    try:
        return Mix(mixup_alpha=alphas["mixup"] if "mixup" in on else 0.0,
                   cutmix_alpha=alphas["cutmix"] if "cutmix" in on else 0.0,
                   cutmix_minmax=t.cutmix_minmax if "cutmix" in on else None,
                   patchmix_alpha=alphas["patchmix"] if "patchmix" in on else 0.0,
                   weights=weights if method == "mix" else None, grid_size=P, prob=t.mix_prob, mode=t.mix_mode,
                   label_smoothing=0.0, generator=generator)
    except ValueError as exc:
        raise ConfigError(f"method {method!r}: {exc}") from None


class Method:
    """One method of one training: its loss (chosen once), and per epoch the index batches every step loads
    and the mixer that turns a loaded batch into a :class:`MixedBatch`.

    Budget: ``batch_size`` samples per step per rank (``train.batch_size`` is the global batch, split over
    the ranks), ``steps_per_epoch`` steps (a rank's share of the training set divided by its batch, at
    least one). ``guided`` loads ``n_original + n_random`` images from the epoch's order and ``2 n_guided``
    more (the pairs) per step, and composes ``batch_size`` samples from them.
    """

    def __init__(self, name: str, cfg: Config, ds: data_mod.Dataset, rt: Runtime, policy=None):
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
        self.name, self.cfg, self.ds, self.rt = name, cfg, ds, rt
        self.loss = make_loss(name, cfg)
        self.n_train = len(ds.train)
        per_rank = -(-self.n_train // rt.world)
        bs = max(1, cfg.train.batch_size // rt.world)
        self.steps_per_epoch = max(1, per_rank // bs)
        self.batch_size = min(bs, per_rank)
        self.load_size = self.batch_size  # dataset indices a step takes from the epoch's order
        # whether an epoch mixes: the one switch this training's index batches, collate and epoch() ask
        self.switch = MixSwitch(cfg.train.mix_off_epoch)
        self.guided = None
        if name == "guided":
            from ..guided import GuidedPatchMix, phase_four_counts

            if policy is None:
                raise ConfigError("method 'guided' needs a policy (run `patchmix search` first, then pass --policy)")
            if policy.grid_size != cfg.model.grid_size:
                raise PolicyError(f"the policy has grid size {policy.grid_size}, the model {cfg.model.grid_size}")
            self.guided = GuidedPatchMix(policy, ds.train.labels)
            self.counts = phase_four_counts(self.batch_size, cfg.train.guided_fractions)
            self.load_size = self.counts[0] + self.counts[1]

    @property
    def total_steps(self) -> int:
        return self.cfg.train.epochs * self.steps_per_epoch

    @property
    def eval_batch_size(self) -> int:
        return max(self.batch_size, 256)

    def schedule(self, epoch: int) -> Callable[[int], float]:
        """``lr(step)`` for the steps of ``epoch`` (the schedule runs over every step of the training)."""
        spe = self.steps_per_epoch
        return lambda step: lr_at(self.cfg, epoch * spe + step, self.total_steps, spe)

    def mixing(self, epoch: int) -> bool:
        """Whether ``epoch`` mixes (False from ``train.mix_off_epoch`` on, timm's ``--mixup-off-epoch``; 0: never
        off): :attr:`switch` decides."""
        return self.switch.mixes(epoch)

    def index_batches(self, streams: EpochStreams, epoch: int = 0) -> list[Tensor]:
        """The epoch's index batches: the training-set indices of every step, int64, a function of the epoch's
        ``order`` and ``guided`` streams alone, drawn whole here (a resumed epoch recomputes them and skips the
        steps already taken). ``guided`` appends each step's guided pairs to its plain part while it mixes."""
        guided = self.guided is not None and self.mixing(epoch)
        load = self.load_size if guided else self.batch_size
        order = data_mod.epoch_order(self.n_train, streams.order, self.rt.rank, self.rt.world)
        order = order[: self.steps_per_epoch * load]
        if not guided:
            return list(order.split(load))
        from ..guided import GuidedBatchSampler

        sampler = GuidedBatchSampler(self.guided, self.counts, order=order, generator=streams.guided)
        return [torch.tensor(b) for b in sampler]

    def mixer(self) -> Mixer:
        """``mix(x, y, generator=None) -> MixedBatch`` of a loaded batch: the method's :func:`make_mixer`, or for
        ``guided`` phase four's :meth:`patchmix.guided.GuidedCollate.mix` (its random part a Random PatchMix)."""
        if self.guided is None:
            return make_mixer(self.name, self.cfg)
        from ..guided import GuidedCollate

        t = self.cfg.train
        alpha = t.alpha if t.patchmix_alpha is None else t.patchmix_alpha
        try:
            random_part = RandomPatchMix(self.cfg.model.grid_size, alpha, t.mix_prob)
        except ValueError as exc:  # a bad train.* setting, like make_mixer's
            raise ConfigError(f"method {self.name!r}: {exc}") from None
        return GuidedCollate(self.guided, self.counts, random_mixer=random_part).mix

    def collate(self, seed: int) -> MixCollate:
        """The loader's ``collate_fn`` for a training seeded with ``seed``: crop/flip (``data.augment``) and mix
        each uint8 batch, every batch drawing from generators seeded by ``(seed, rank, epoch, step)``."""
        augment = data_mod.augment_mode(self.cfg.data.augment, self.ds)
        return MixCollate(self.mixer(), seed=loader_seed(seed), rank=self.rt.rank,
                          transform=None if augment == "none" else data_mod.Augment(augment), switch=self.switch)

    def epoch(self, streams: EpochStreams, epoch: int = 0) -> tuple[list[Tensor], Mixer]:
        """The epoch's index batches and, for code that mixes loaded batches itself, the mixer (unmixed from
        ``train.mix_off_epoch`` on)."""
        mixer = self.mixer() if self.mixing(epoch) else functools.partial(
            MixedBatch.unmixed, grid_size=self.cfg.model.grid_size)
        return self.index_batches(streams, epoch), mixer

    def wrap_ddp(self, net: nn.Module) -> nn.Module:
        """``net`` under DDP when distributed (gradients averaged over the ranks), else ``net`` itself."""
        if not self.rt.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        # only the patch-supervised methods train the patch head (L_T); the others leave it without gradients
        return DDP(net, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None,
                   find_unused_parameters=self.name not in PATCH_SUPERVISED)


__all__ = ["Method", "make_loss", "make_mixer"]
