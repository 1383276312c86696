"""``patchmix.Mix``: one mixer with every knob of timm's ``Mixup`` (Mixup, CutMix with ``cutmix_minmax`` and
``correct_lam``, ``prob``, ``switch_prob``, ``mode``, ``label_smoothing``, an on/off switch), plus Random
PatchMix and weights over any subset of the three. It returns a :class:`~patchmix.mixing.batch.MixedBatch`.

Modes (timm's names):

* ``"batch"``: one method and one ``lam`` draw for the whole batch (the cheap path): Mixup blends with one
  weight, CutMix pastes one box, PatchMix composes with one ``P x P`` mask. The per-batch choices are drawn
  on the host from a CPU generator (never a read of device data), like timm's numpy draws.
* ``"elem"``: a method, a gate (``prob``) and a ``lam`` per sample, vectorised on the data's device (no Python
  loop over samples, no host read: :mod:`patchmix.mixing.sampling`).
* ``"pair"``: as ``"elem"``, but the two samples of a pair (``partner[partner[i]] == i``) share their draws,
  so the pair's two outputs are complementary composites.

Pairing: output sample ``i`` takes source *a* ``x[i]`` (label ``y[i]``, weight ``lam``) and source *b*
``x[partner[i]]``; ``pairing="random"`` draws a permutation (patchmix's convention, any batch size, a sample
may meet itself), ``"flip"`` uses timm's ``partner[i] = B - 1 - i``.

CutMix boxes are timm 1.0's in every mode (:mod:`patchmix.mixing.sampling`; ``tests/test_timm_parity.py``
checks them, and every mode, against timm's own ``mixup.py``).

Differences from timm, by design: ``lam`` of PatchMix and CutMix is the realised pixel fraction (timm's
``correct_lam=True``; ``correct_lam=False`` keeps timm's uncorrected CutMix ``lam``); odd, single-sample and
empty batches are valid (timm asserts an even batch); the input is never modified in place; uint8 images are
accepted everywhere, Mixup rounding them as timm's ``FastCollateMixup`` does.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..choices import MIX_METHODS, MIX_MODES
from . import checks
from .batch import MixedBatch, compose, rows, to_dtype
from .sampling import (
    PAIRINGS,
    box_area,
    check_minmax,
    choose,
    cutmix_boxes,
    device_generator,
    grid_masks,
    host_beta,
    host_choice,
    host_cutmix_box,
    host_minmax_box,
    host_rng,
    involution,
    minmax_boxes,
    partners,
    sample_beta,
)
from .switch import MixSwitch


class MixPlan(NamedTuple):
    """The draws of one ``"elem"``/``"pair"`` call for ``N`` samples (see :meth:`Mix.sample`)."""

    index_b: Tensor            # int64 (N,) source b of every sample
    mask: Tensor | None        # bool (N, P, P) grid, all-True for samples without one
    has_grid: Tensor | None    # bool (N,) which samples are PatchMix samples (None: all or none)
    box: Tensor | None         # int64 (N, 4) CutMix box, empty for other samples
    blend: Tensor | None       # float32 (N,) Mixup weight of a, 1 for other samples
    lam: Tensor                # float32 (N,) label weight of a from Mixup and CutMix (1 for grid samples)


def check_batch(x: Tensor, y: Tensor) -> None:
    """``x`` floating or uint8 images ``(B, C, H, W)``; ``y`` int64 ``(B,)`` or floating soft labels ``(B, K)`` on
    ``x``'s device."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise ValueError(f"x must be images of shape (B, C, H, W), got {getattr(x, 'shape', type(x))}")
    if not (x.is_floating_point() or x.dtype == torch.uint8):
        raise ValueError(f"x must be floating or uint8 images, got dtype {x.dtype}")
    B = x.shape[0]
    if not isinstance(y, Tensor) or y.dim() not in (1, 2) or y.shape[0] != B:
        raise ValueError(f"y must be int64 labels of shape (B,) = ({B},) or floating soft labels (B, K), "
                         f"got {getattr(y, 'shape', type(y))}")
    if (y.dim() == 1 and y.dtype != torch.int64) or (y.dim() == 2 and not y.is_floating_point()):
        raise ValueError(f"y must be int64 class indices (B,) or floating soft labels (B, K), got dtype {y.dtype} "
                         f"shape {tuple(y.shape)}")
    if y.device != x.device:
        # the labels are gathered with indices drawn on the images' device: on another device that fails deep
        # inside an index op, or (CUDA labels, CPU images) moves them back and forth
        raise ValueError(f"y (the labels) is on {y.device} but x (the images) is on {x.device}; move the labels to "
                         f"the images' device")


def _method_weights(alphas: dict[str, float], switch_prob, weights) -> tuple[float, ...]:
    """Normalised ``(mixup, cutmix, patchmix)`` weights: from ``weights`` (mapping or sequence), else timm's
    ``switch_prob`` between Mixup and CutMix, else uniform over the active methods (alpha > 0)."""
    active = [m for m in MIX_METHODS if alphas[m] > 0]
    if weights is not None:
        if switch_prob is not None:
            raise ValueError("Mix: give either switch_prob (timm's Mixup/CutMix switch) or weights, not both")
        if isinstance(weights, Mapping):
            unknown = set(weights) - set(MIX_METHODS)
            if unknown:
                raise ValueError(f"Mix: weights name unknown methods {sorted(unknown)}; choose from {MIX_METHODS}")
            w = checks.weights("Mix", "weights", [weights.get(m, 0.0) for m in MIX_METHODS])
        else:
            w = checks.weights("Mix", "weights (mixup, cutmix, patchmix)", weights, count=3)
        for m, v in zip(MIX_METHODS, w, strict=True):
            if v > 0 and m not in active:
                what = "cutmix_alpha > 0 or cutmix_minmax" if m == "cutmix" else f"{m}_alpha > 0"
                raise ValueError(f"Mix: weights give {m} weight {v:g} but {m} is off; it needs {what}")
    elif not active:
        raise ValueError("Mix: no method is on; give mixup_alpha, cutmix_alpha (or cutmix_minmax) or patchmix_alpha > 0")
    elif switch_prob is not None and "patchmix" in active and len(active) > 1:
        raise ValueError("Mix: switch_prob switches between Mixup and CutMix only; with PatchMix too, give weights")
    elif active == ["mixup", "cutmix"]:
        sp = 0.5 if switch_prob is None else switch_prob
        w = (1.0 - sp, sp, 0.0)
    else:
        w = tuple(1.0 if m in active else 0.0 for m in MIX_METHODS)
    total = sum(w)
    return tuple(v / total for v in w)


class Mix(nn.Module):
    """Mixup, CutMix and Random PatchMix behind timm's ``Mixup`` knobs; ``forward(x, y) -> MixedBatch``.

    Args (timm's names and defaults first):
        mixup_alpha: Beta(alpha, alpha) of Mixup; Mixup is on when > 0.
        cutmix_alpha: Beta of CutMix; CutMix is on when > 0 or when ``cutmix_minmax`` is given.
        cutmix_minmax: ``(lo, hi)``: CutMix box sides uniform in ``[int(S * lo), int(S * hi))`` of each image side
            ``S``, placed inside the image (timm's ``rand_bbox_minmax``); ``lam`` is then always the exact area.
        prob: probability that a batch (``"batch"``) or a sample (``"elem"``, ``"pair"``) is mixed at all.
        switch_prob: probability of CutMix rather than Mixup when both are on (default 0.5).
        mode: ``"batch"``, ``"pair"`` or ``"elem"`` (module docstring).
        correct_lam: CutMix's ``lam`` is the box's exact remaining area (True) or the Beta draw (False).
        label_smoothing: ``eps`` recorded on the batch (``MixedBatch.to_dense`` and ``PatchMixLoss()`` use it).
        num_classes: for :meth:`dense` (timm's return value); optional.
        patchmix_alpha: Beta of Random PatchMix (per-cell Bernoulli(lam) masks); on when > 0.
        grid_size: ``P`` of PatchMix's ``P x P`` grid.
        weights: ``{"mixup": w, "cutmix": w, "patchmix": w}`` or a 3-sequence: how often each method is chosen
            (instead of ``switch_prob``); default uniform over the methods that are on.
        pairing: ``"random"`` (a permutation) or ``"flip"`` (timm's reversed batch).
        enabled: False returns unmixed batches (timm's ``mixup_enabled``): the ``enabled`` of the mixer's
            :class:`~patchmix.mixing.switch.MixSwitch` (``Mix.switch``); ``Mix.enabled`` reads and sets it.
        generator: a ``torch.Generator`` to draw from (default: torch's default ones); ``forward`` may pass
            another per call (the collate passes one per batch).

    Every argument is checked here (``ValueError`` naming it): alphas finite and ``>= 0``, ``prob`` and
    ``switch_prob`` in ``[0, 1]``, ``label_smoothing`` in ``[0, 1)``, ``cutmix_minmax`` with ``0 < lo < hi <= 1``,
    ``weights`` finite, ``>= 0`` and not all 0, ``grid_size`` and ``num_classes`` integers ``>= 1``.
    """

    def __init__(self, mixup_alpha: float = 1.0, cutmix_alpha: float = 0.0,
                 cutmix_minmax: Sequence[float] | None = None, prob: float = 1.0, switch_prob: float | None = None,
                 mode: str = "batch", correct_lam: bool = True, label_smoothing: float = 0.1,
                 num_classes: int | None = None, *, patchmix_alpha: float = 0.0, grid_size: int = 4,
                 weights: Mapping[str, float] | Sequence[float] | None = None, pairing: str = "random",
                 enabled: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        # every hyperparameter checked here, where it is defined: an infinite alpha would hang batch mode (Python's
        # betavariate) and give NaN images in the others; the samplers check again at their entry
        alphas = {m: checks.real("Mix", f"{m}_alpha", a, low=0.0)
                  for m, a in zip(MIX_METHODS, (mixup_alpha, cutmix_alpha, patchmix_alpha), strict=True)}
        if cutmix_minmax is not None:
            cutmix_minmax = check_minmax(cutmix_minmax, "Mix")
            alphas["cutmix"] = alphas["cutmix"] or 1.0  # timm: the box comes from minmax; CutMix is on
        grid_size = checks.integer("Mix", "grid_size", grid_size, low=1)
        prob = checks.probability("Mix", "prob", prob)
        if switch_prob is not None:
            switch_prob = checks.probability("Mix", "switch_prob", switch_prob)
        if mode not in MIX_MODES:
            raise ValueError(f"Mix: mode must be one of {MIX_MODES}, got {mode!r}")
        if pairing not in PAIRINGS:
            raise ValueError(f"Mix: pairing must be one of {PAIRINGS}, got {pairing!r}")
        label_smoothing = checks.label_smoothing("Mix", label_smoothing)
        if num_classes is not None:
            num_classes = checks.integer("Mix", "num_classes", num_classes, low=1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"Mix: generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.alphas = alphas
        self.weights = _method_weights(self.alphas, switch_prob, weights)
        self.methods = tuple(m for m, w in zip(MIX_METHODS, self.weights, strict=True) if w > 0)
        self._active_weights = tuple(w for w in self.weights if w > 0)
        self.cutmix_minmax = cutmix_minmax
        self.prob, self.mode, self.correct_lam = prob, mode, bool(correct_lam)
        self.label_smoothing, self.num_classes = label_smoothing, num_classes
        self.grid_size, self.pairing = grid_size, pairing
        self.switch = MixSwitch(enabled=enabled)  # the one on/off rule (patchmix.mixing.switch)
        self.generator = generator
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._rng = random.Random()  # batch mode's host draws, reseeded from the generator every call

    @property
    def enabled(self) -> bool:
        """Whether the mixer mixes (timm's ``mixup_enabled``): its switch's ``enabled``."""
        return self.switch.enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self.switch.enabled = bool(value)

    # ----------------------------------------------------------------------------------------------
    def draw_generator(self, device, generator: torch.Generator | None = None) -> torch.Generator | None:
        """The generator to draw on ``device`` with (``generator``, default the mixer's; see
        :func:`patchmix.mixing.sampling.device_generator`)."""
        source = generator if generator is not None else self.generator
        return device_generator(source, device, self._device_generators)

    def unmixed(self, x: Tensor, y: Tensor) -> MixedBatch:
        """The batch unmixed (what ``enabled=False`` returns): with an all-True grid when PatchMix is on."""
        return MixedBatch.unmixed(x, y, self.grid_size if "patchmix" in self.methods else None, self.label_smoothing)

    def forward(self, x: Tensor, y: Tensor, generator: torch.Generator | None = None,
                out: Tensor | None = None) -> MixedBatch:
        """Mix ``x (B, C, H, W)`` (floating or uint8, any memory format) labelled ``y`` (int64 ``(B,)`` or soft
        ``(B, K)``). ``generator``: this call's draws (default: the mixer's); ``out``: a ``(B, C, H, W)`` buffer of
        ``x``'s dtype for the images (shared or pinned memory)."""
        check_batch(x, y)
        if not self.switch.mixes():
            return _into(self.unmixed(x, y), x, out)
        if self.mode == "batch":
            return self._mix_batch(x, y, generator if generator is not None else self.generator, out)
        B, _, H, W = x.shape
        plan = self.sample(B, H, W, x.device, self.draw_generator(x.device, generator))
        images, grid_lam = compose(x, None, plan.index_b, mask=plan.mask, box=plan.box, blend=plan.blend, out=out)
        lam = plan.lam if grid_lam is None else plan.lam * grid_lam  # one factor differs from 1 per sample
        return MixedBatch(images, y, rows(y, plan.index_b), lam, plan.mask, torch.arange(B, device=x.device), plan.index_b,
                          plan.has_grid, plan.box, plan.blend, self.label_smoothing)

    def dense(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """timm's return value: ``(images, dense targets (B, num_classes))`` (needs ``num_classes``)."""
        if self.num_classes is None:
            raise ValueError("Mix.dense: construct the Mix with num_classes (timm's dense targets need it)")
        batch = self(x, y)
        return batch.images, batch.to_dense(self.num_classes)

    # ----------------------------------------------------------------------------------------------
    # "elem" and "pair": per-sample draws on the device
    # ----------------------------------------------------------------------------------------------
    def sample(self, batch: int, height: int, width: int, device, generator: torch.Generator | None = None) -> MixPlan:
        """The per-sample draws of one ``"elem"``/``"pair"`` call (no host read; traces with ``fullgraph=True``).

        Order of draws: partners, method per sample (when more than one is on), gate (when ``prob < 1``), then
        per method on: Mixup's Beta; CutMix's Beta and box (or the minmax box); PatchMix's Beta and cells. In
        ``"pair"`` mode every draw is taken from the pair's first sample."""
        B, dev, g = batch, device, generator
        pair = self.mode == "pair"
        index_b = (involution if pair else partners)(B, self.pairing, g, dev)
        leader = torch.minimum(torch.arange(B, device=dev), index_b) if pair else None

        def shared(t: Tensor) -> Tensor:  # a per-sample draw, the pair's first sample's in "pair" mode
            return t if leader is None else t[leader]

        kind = shared(choose(B, self.weights, g, dev)) if len(self.methods) > 1 else None
        gate = shared(torch.rand(B, generator=g, device=dev) < self.prob) if self.prob < 1.0 else None

        def uses(name: str) -> Tensor | None:  # bool (B,): mixed by method `name`; None: every sample
            m = None if kind is None else kind == MIX_METHODS.index(name)
            return m if gate is None else (gate if m is None else m & gate)

        one = torch.ones(B, dtype=torch.float32, device=dev)
        lam, mask, has_grid, box, blend = one, None, None, None, None
        if "mixup" in self.methods:
            w = shared(sample_beta(self.alphas["mixup"], B, g, dev))
            on = uses("mixup")
            blend = w if on is None else torch.where(on, w, one)
            lam = lam * blend
        if "cutmix" in self.methods:
            boxes, cut_lam = self._boxes(B, height, width, dev, g)
            boxes, cut_lam = shared(boxes), shared(cut_lam)
            on = uses("cutmix")
            box = boxes if on is None else torch.where(on[:, None], boxes, 0)
            lam = lam * (cut_lam if on is None else torch.where(on, cut_lam, one))
        if "patchmix" in self.methods:
            cells = shared(grid_masks(sample_beta(self.alphas["patchmix"], B, g, dev), self.grid_size, g))
            on = uses("patchmix")
            mask = cells if on is None else cells | ~on[:, None, None]
            has_grid = None if kind is None else kind == MIX_METHODS.index("patchmix")
        return MixPlan(index_b, mask, has_grid, box, blend, lam)

    def _boxes(self, batch: int, height: int, width: int, device, generator) -> tuple[Tensor, Tensor]:
        """CutMix boxes ``(batch, 4)`` and their ``lam`` ``(batch,)``: the exact remaining area (always with
        ``cutmix_minmax``), or the Beta draw with ``correct_lam=False``."""
        if self.cutmix_minmax is not None:
            boxes = minmax_boxes(batch, height, width, self.cutmix_minmax, generator, device)
            lam0 = None
        else:
            lam0 = sample_beta(self.alphas["cutmix"], batch, generator, device)
            boxes = cutmix_boxes(lam0, height, width, generator)
        if lam0 is not None and not self.correct_lam:
            return boxes, lam0
        return boxes, (1.0 - box_area(boxes).double() / (height * width)).to(torch.float32)

    def sample_masks(self, batch: int, device, generator: torch.Generator | None = None) -> Tensor:
        """Random PatchMix masks ``(batch, P, P)`` bool on ``device``: one Beta draw per sample, cells True with
        that probability; samples the gate leaves unmixed are all True. ``generator``: one on ``device``
        (default: :meth:`draw_generator`)."""
        g = generator if generator is not None else self.draw_generator(device)
        alpha = self.alphas["patchmix"] if self.alphas["patchmix"] > 0 else 1.0
        mask = grid_masks(sample_beta(alpha, batch, g, device), self.grid_size, g)
        if self.prob < 1.0:
            keep = torch.rand(batch, generator=g, device=device) >= self.prob
            mask = mask | keep[:, None, None]
        return mask

    def boxes(self, batch: int, height: int, width: int, device, generator: torch.Generator | None = None) -> Tensor:
        """CutMix boxes ``(batch, 4)`` int64 on ``device`` as ``(top, bottom, left, right)``, bottom/right
        exclusive. ``generator``: one on ``device`` (default: :meth:`draw_generator`)."""
        g = generator if generator is not None else self.draw_generator(device)
        return self._boxes(batch, height, width, device, g)[0]

    # ----------------------------------------------------------------------------------------------
    # "batch": one method, one lam, drawn on the host
    # ----------------------------------------------------------------------------------------------
    def _mix_batch(self, x: Tensor, y: Tensor, g: torch.Generator | None, out: Tensor | None) -> MixedBatch:
        if g is not None and g.device.type != "cpu":
            raise ValueError(f"Mix: mode='batch' draws its per-batch choices on the host; pass a CPU generator, "
                             f"not one on {g.device}")
        B, _, H, W = x.shape
        dev = x.device
        rng = host_rng(g, self._rng)
        method = self.methods[host_choice(rng, self._active_weights)]
        if not rng.random() < self.prob:
            return _into(MixedBatch.unmixed(x, y, self.grid_size if method == "patchmix" else None,
                                            self.label_smoothing), x, out)
        index_b = partners(B, self.pairing, self.draw_generator(dev, g), dev)
        mask = box = blend = None
        if method == "mixup":
            lam0 = to_dtype(host_beta(rng, self.alphas["mixup"]), torch.float32)
            images, _ = compose(x, None, index_b, blend=lam0, out=out)  # scalar weights: the same bits, faster
            blend = lam = _filled(lam0, B, torch.float32, dev)
        elif method == "cutmix":
            if self.cutmix_minmax is not None:
                lam0, corners = None, host_minmax_box(rng, H, W, self.cutmix_minmax)
            else:
                lam0 = host_beta(rng, self.alphas["cutmix"])
                corners = host_cutmix_box(rng, lam0, H, W)
            top, bottom, left, right = corners
            images = x.clone() if out is None else out.copy_(x)
            # one box for all: gather the partners' box regions straight into the output's box (no temporary)
            region = (slice(None), slice(None), slice(top, bottom), slice(left, right))
            torch.index_select(x[region], 0, index_b, out=images[region])
            box = _filled(corners, B, torch.int64, dev)
            area_lam = 1.0 - (bottom - top) * (right - left) / (H * W)
            lam = _filled(lam0 if lam0 is not None and not self.correct_lam else area_lam, B, torch.float32, dev)
        else:
            lam0 = host_beta(rng, self.alphas["patchmix"])
            cells = torch.rand(self.grid_size, self.grid_size, generator=self.draw_generator(dev, g), device=dev) < lam0
            mask = cells.expand(B, -1, -1)
            images, grid_lam = compose(x, None, index_b, mask=mask, out=out)
            assert grid_lam is not None  # check_batch: floating or uint8 images, whose grids grid_mix measures
            lam = grid_lam
        return MixedBatch(images, y, rows(y, index_b), lam, mask, torch.arange(B, device=dev), index_b, None, box,
                          blend, self.label_smoothing)

    def extra_repr(self) -> str:
        on = ", ".join(f"{m}={w:.3g}" for m, w in zip(MIX_METHODS, self.weights, strict=True) if w > 0)
        alphas = ", ".join(f"{m}_alpha={self.alphas[m]:g}" for m in self.methods)
        return (f"{on}; {alphas}, mode={self.mode!r}, prob={self.prob}, grid_size={self.grid_size}, "
                f"label_smoothing={self.label_smoothing}, pairing={self.pairing!r}, enabled={self.enabled}")


def _into(batch: MixedBatch, x: Tensor, out: Tensor | None) -> MixedBatch:
    """``batch`` (whose images are ``x`` itself) with its images copied into ``out`` when given."""
    return batch if out is None else batch.map(lambda t: out.copy_(t) if t is x else t)


def _filled(value, n: int, dtype: torch.dtype, device) -> Tensor:
    """``(n,)`` filled with a host number, or ``(n, k)`` with a host row of ``k`` numbers, on ``device``: built on
    the CPU and expanded there (a few microseconds), with fill kernels elsewhere (a small tensor copied from
    the host would wait for the device)."""
    if not isinstance(value, (tuple, list)):
        return torch.full((n,), value, dtype=dtype, device=device)
    row, device = value, torch.device(device)
    if device.type == "cpu":
        out = torch.tensor(row, dtype=dtype).expand(n, len(row))
    else:
        out = torch.stack([torch.full((n,), v, dtype=dtype, device=device) for v in row], 1)
    return out


__all__ = ["MIX_METHODS", "MIX_MODES", "Mix", "MixPlan", "check_batch"]
