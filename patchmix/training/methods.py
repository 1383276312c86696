"""The training methods (paper Table 1): what each step loads, how it mixes, and which loss trains it.

* ``base``: no mixing; ``mixup``, ``cutmix``: the classic mixers; ``random``: Random PatchMix with the
  fused image + patch loss ``L_T`` (the paper's phase one);
* ``guided``: phase four: each batch holds original, random-mixed and policy-guided samples, built by
  :class:`patchmix.guided.MixedBatchSampler` (indices) and :class:`patchmix.guided.MixedCollate` (mixing).

Every method goes through :class:`patchmix.PatchMixLoss`; all but ``random`` use its image term ``L_O`` only.
Every method takes the same number of steps of the same batch size (the same budget): an epoch of
``guided`` shows each training image as an original or random-mixed sample with probability
``(n_original + n_random) / B``; its guided samples are drawn from the whole training set.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..augment import CutMix, MixedBatch, Mixup, RandomPatchMix
from ..choices import METHODS, PATCH_SUPERVISED
from ..config import Config
from ..errors import ConfigError, PolicyError
from ..losses import PatchMixLoss
from .optim import lr_at
from .runtime import Runtime
from .streams import EpochStreams

Mixer = Callable[[Tensor, Tensor], MixedBatch]
Loss = Callable[[tuple, MixedBatch], Tensor]


def make_loss(method: str, cfg: Config) -> Loss:
    """``loss(model outputs, batch)``: ``L_T`` (image + patch terms) for ``random``; ``L_O`` (the image term
    at full weight) for the others, whose patch head then gets no gradient."""
    t = cfg.train
    if method in PATCH_SUPERVISED:
        return PatchMixLoss(image_weight=t.image_weight, patch_weight=t.patch_weight, label_smoothing=t.label_smoothing)
    image_loss = PatchMixLoss(image_weight=1.0, patch_weight=0.0, label_smoothing=t.label_smoothing)
    return lambda outputs, batch: image_loss(outputs[0], batch)


def make_mixer(method: str, cfg: Config, generator: torch.Generator) -> Mixer:
    """``mix(x float (B, C, H, W) in [0, 1], y (B,)) -> MixedBatch`` for the batch-local methods (``base``,
    ``mixup``, ``cutmix``, ``random``), drawing from ``generator``; ``guided`` needs a :class:`Method`."""
    t, P = cfg.train, cfg.model.grid_size
    if method == "base":
        return lambda x, y: MixedBatch.unmixed(x, y, P)
    if method == "mixup":
        return Mixup(t.alpha, generator=generator)
    if method == "cutmix":
        return CutMix(t.alpha, generator=generator)
    if method == "random":
        return RandomPatchMix(P, t.alpha, t.mix_prob, generator=generator)
    if method == "guided":
        raise ConfigError("method 'guided' mixes whole phase-four batches: use patchmix.training.Method")
    raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


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

    def epoch(self, streams: EpochStreams) -> tuple[list[Tensor], Mixer]:
        """The epoch's index batches (the training-set indices of every step, int64) and its mixer.

        The index batches are a function of the epoch's ``order`` and ``guided`` streams alone, drawn whole
        here: a resumed epoch recomputes them and skips the steps already taken.
        """
        order = data_mod.epoch_order(self.n_train, streams.order, self.rt.rank, self.rt.world)
        order = order[: self.steps_per_epoch * self.load_size]
        if self.guided is None:
            return list(order.split(self.load_size)), make_mixer(self.name, self.cfg, streams.mix)
        from ..guided import MixedBatchSampler, MixedCollate

        sampler = MixedBatchSampler(self.guided, self.counts, order=order, generator=streams.guided)
        t = self.cfg.train
        random_part = RandomPatchMix(self.cfg.model.grid_size, t.alpha, t.mix_prob, generator=streams.mix)
        return [torch.tensor(b) for b in sampler], MixedCollate(self.guided, self.counts, random_mixer=random_part).mix

    def wrap_ddp(self, net: nn.Module) -> nn.Module:
        """``net`` under DDP when distributed (gradients averaged over the ranks), else ``net`` itself."""
        if not self.rt.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        # only the patch-supervised methods train the patch head (L_T); the others leave it without gradients
        return DDP(net, device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None,
                   find_unused_parameters=self.name not in PATCH_SUPERVISED)


__all__ = ["Method", "make_loss", "make_mixer"]
