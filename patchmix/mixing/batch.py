"""The mixed batch: what every mixer returns, what :class:`patchmix.PatchMixLoss` trains on, and the one
composition rule that made its images (:func:`compose`), so any other per-sample tensor can be mixed the same
way (:meth:`MixedBatch.apply`).

Composition of output sample ``n`` from sources ``a = t[index_a[n]]`` and ``b = t[index_b[n]]``, in this order:

1. grid (PatchMix): pixel ``(h, w)`` from ``a`` where its cell of ``mask[n]`` is True, else from ``b`` (the
   op ``grid_mix``; samples without a grid in a batch that has one carry an all-True mask);
2. box (CutMix): pixels inside ``box[n] = (top, bottom, left, right)`` (bottom/right exclusive) from ``b``;
3. blend (Mixup): where ``blend[n] < 1``, ``blend[n] * a + (1 - blend[n]) * b``.

A sample uses one of the three (or none); the others are then neutral (all-True mask, empty box, blend 1).
Blending an integer tensor computes in float32 and rounds half to even, as timm's ``FastCollateMixup`` does
for uint8 images; that is right for images and weight maps but meaningless for class-id maps (a
segmentation), so ``discrete=True`` (default for bool tensors) takes the source with the larger weight
instead (``a`` when ``blend >= 0.5``).

Label formats: ``target_a``/``target_b`` are int64 class indices ``(N,)`` or soft labels ``(N, K)`` (to chain
mixers, or from timm's dense targets); :meth:`MixedBatch.to_dense` gives timm's dense target, and
:meth:`MixedBatch.to_kornia` / :meth:`MixedBatch.from_kornia` convert to and from Kornia's ``(B, 3)`` rows.
"""

from __future__ import annotations

import functools
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..ops import grid_mix, patch_targets, soft_targets
from ..ops.contracts.grid_mix import SUPPORTED_DTYPES as GRID_MIX_DTYPES
from ..ops.grid_mix import upsample_mask

KORNIA_FORMATS = ("mixup", "cutmix")


# --------------------------------------------------------------------------------------------------
# composition
# --------------------------------------------------------------------------------------------------


def box_mask(box: Tensor, height: int, width: int) -> Tensor:
    """bool ``(N, height, width)``: the pixels inside each ``box (N, 4)`` (top, bottom, left, right)."""
    rows = torch.arange(height, device=box.device)
    cols = torch.arange(width, device=box.device)
    in_rows = (rows[None] >= box[:, 0:1]) & (rows[None] < box[:, 1:2])
    in_cols = (cols[None] >= box[:, 2:3]) & (cols[None] < box[:, 3:4])
    return in_rows[:, :, None] & in_cols[:, None, :]


def blend_pixels(a: Tensor, b: Tensor, w: Tensor | float, discrete: bool = False, out: Tensor | None = None) -> Tensor:
    """``w * a + (1 - w) * b`` per sample (``w (N,)``, or one number for the whole batch), with timm's weights
    (Python floats there: ``1 - lam`` taken in double, then rounded to the dtype), ``b`` scaled in place: in ``a``'s
    dtype for floating tensors (then ``a * w`` added in one pass: no allocation beyond ``b``'s gather, which
    matters on the CPU, where a fresh batch-sized buffer can cost a page fault per 4 KiB); in float32 rounded
    half to even for integer ones (timm's uint8 blend, each product rounded as timm does); ``a`` or ``b`` by the
    larger weight when ``discrete`` (class-id maps) or for bool tensors. ``b`` must be a tensor of its own.
    A number and a tensor of that number give the same bits. ``out``: where integer results go (default new)."""
    dtype = a.dtype if a.is_floating_point() else torch.float32
    if not isinstance(w, Tensor) and dtype in (torch.float16, torch.bfloat16):  # add_(alpha=) rounds otherwise there
        w = torch.full((a.shape[0],), w, dtype=torch.float32, device=a.device)
    wa: Tensor | float
    wb: Tensor | float
    if isinstance(w, Tensor):
        w = w.view(-1, *([1] * (a.dim() - 1)))
        if discrete or a.dtype == torch.bool:
            return select(w >= 0.5, a, b)
        wa, wb = w.to(dtype), (1 - w.double()).to(dtype)
    else:
        if discrete or a.dtype == torch.bool:
            return a.clone() if w >= 0.5 else b
        wa, wb = (to_dtype(v, dtype) for v in (w, 1.0 - w))  # rounded to the dtype, as above
    if a.is_floating_point():
        return b.mul_(wb).addcmul_(a, wa) if isinstance(wa, Tensor) else b.mul_(wb).add_(a, alpha=wa)
    # the two float32 products in a scratch buffer kept per thread: fresh batch-sized temporaries cost a page
    # fault per 4 KiB on every call, several times the arithmetic; converting before multiplying keeps the
    # multiply vectorised
    f = _scratch((2, *a.shape), a.device)
    f[0].copy_(a).mul_(wa)
    f[1].copy_(b).mul_(wb)
    blended = f[0].add_(f[1])
    out = torch.empty_like(a) if out is None else out
    if a.dtype == torch.uint8 and a.device.type == "cpu":
        # round half to even by adding 2**23 (the float32 sum's last bit is then the units place; exact for
        # |v| < 2**22) and keep the low byte: one pass, where round_ and a float32 -> uint8 conversion take two
        # and the conversion is the slow one
        return out.copy_(blended.add_(8388608.0).view(torch.int32))
    return out.copy_(blended.round_())


_SCRATCH = threading.local()
#: scratch buffers up to this size are kept per thread (a 256-image 3x32x32 float32 pair is 6 MiB)
SCRATCH_MAX_BYTES = 64 << 20


def _scratch(shape: tuple[int, ...], device) -> Tensor:
    """A float32 buffer of ``shape`` (contents undefined), reused per thread and device when small enough."""
    n = 1
    for s in shape:
        n *= s
    if n * 4 > SCRATCH_MAX_BYTES or torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device)
    cache = getattr(_SCRATCH, "buffer", None)
    if cache is None or cache.numel() < n:
        cache = _SCRATCH.buffer = torch.empty(n, dtype=torch.float32)
    return cache[:n].view(shape)


def to_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to float32 (``struct``: a tenth of a tensor round trip's cost) or kept for float64; other
    dtypes through a tensor."""
    if dtype == torch.float64:
        return float(value)
    if dtype == torch.float32:
        return struct.unpack("f", struct.pack("f", value))[0]
    return float(torch.tensor(value, dtype=dtype))


def rows(x: Tensor, index: Tensor | None, out: Tensor | None = None) -> Tensor:
    """``x[index]`` along the first dimension, a new tensor (or ``out``) in ``x``'s memory format
    (``index_select``: several times faster than advanced indexing on the CPU); ``x`` itself for None."""
    if index is None:
        return x if out is None else out.copy_(x)
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # index_select returns contiguous tensors: gather in the (B, H, W, C) view
        into = None if out is None else out.permute(0, 2, 3, 1)
        return torch.index_select(x.permute(0, 2, 3, 1), 0, index, out=into).permute(0, 3, 1, 2)
    return torch.index_select(x, 0, index, out=out)


_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def select(cond: Tensor, if_true: Tensor, if_false: Tensor, out: Tensor | None = None) -> Tensor:
    """``torch.where(cond, if_true, if_false)`` for two tensors of one shape and dtype (``cond`` broadcasting), into
    ``out`` when given. On the CPU as bit operations on an integer view, ``f ^ ((f ^ t) & -cond)``: vectorised
    where ``where`` is not, an order of magnitude faster for uint8 images."""
    if if_true.device.type != "cpu" or if_true.dtype.is_complex or if_true.shape != if_false.shape:
        return torch.where(cond, if_true, if_false, out=out) if out is not None else torch.where(cond, if_true, if_false)
    bits = torch.bool if if_true.dtype == torch.bool else _BITS[if_true.element_size()]
    t, f = if_true.view(bits), if_false.view(bits)
    ones = cond if bits == torch.bool else cond.to(bits).neg_()
    res = torch.bitwise_xor(f, t, out=None if out is None else out.view(bits))  # the one batch-sized buffer
    return res.bitwise_and_(ones).bitwise_xor_(f).view(if_true.dtype)


def compose(x: Tensor, index_a: Tensor | None, index_b: Tensor, *, mask: Tensor | None = None,
            box: Tensor | None = None, blend: Tensor | float | None = None, discrete: bool = False,
            out: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The composition rule of the module docstring, for ``x (B, C, H, W)`` (or ``(B, H, W)``; any ``(B, ...)``
    when only ``blend`` is given) and ``index_a``, ``index_b`` int64 ``(N,)`` (``index_a=None``: ``arange(B)``).
    ``blend`` may be one number for every sample when it is the only step.

    Returns ``(mixed (N, ...), grid_lam (N,) or None)``: ``grid_lam`` is the exact pixel fraction the grid
    takes from ``a`` (1 for an all-True mask). ``out``: a buffer of the result's shape and dtype to write into.
    """
    spatial = mask is not None or box is not None
    if spatial and x.dim() not in (3, 4):
        raise ValueError(f"compose: a grid or box needs a (B, C, H, W) or (B, H, W) tensor, got {tuple(x.shape)}")
    if spatial and blend is not None and not isinstance(blend, Tensor):
        raise TypeError(f"compose: blend with a grid or box must be a (N,) tensor, got {type(blend).__name__}")
    if x.dim() == 3 and spatial:
        mixed, lam = compose(x[:, None], index_a, index_b, mask=mask, box=box, blend=blend, discrete=discrete,
                             out=None if out is None else out[:, None])
        return mixed[:, 0], lam
    # x[index_a] and x[index_b], each gathered once and only by a step that reads it (grid_mix takes the
    # indices itself); the blend, the last step, scales its b in place
    a = functools.cache(lambda: rows(x, index_a))
    b = functools.cache(lambda: rows(x, index_b))
    res: Tensor | None = None
    grid_lam: Tensor | None = None
    # the last step writes straight into `out` (a shared-memory buffer in a DataLoader worker)
    if mask is not None:
        last = out if box is None and blend is None else None
        if x.dtype in GRID_MIX_DTYPES:
            res, grid_lam = grid_mix(x, mask, index_a, index_b, out=last)
        else:  # the op's rule for dtypes it does not serve (int64 label maps, bool masks)
            full = upsample_mask(mask, x.shape[-2], x.shape[-1])
            res = select(full[:, None], a(), b(), out=last)
    if box is not None:
        res = select(box_mask(box, x.shape[-2], x.shape[-1])[:, None], b(), a() if res is None else res,
                     out=out if blend is None else None)
    if blend is not None:
        if spatial:
            # the grid or box step ran; blend is a number only without them (checked above)
            assert res is not None and isinstance(blend, Tensor)
            blended = blend_pixels(a(), b(), blend, discrete)
            res = select((blend < 1).view(-1, *([1] * (x.dim() - 1))), blended, res, out=out)
        else:  # b gathered into `out` when the blend is computed in place there
            into = out if out is not None and x.is_floating_point() and not discrete else None
            res = blend_pixels(a(), rows(x, index_b, into), blend, discrete, out=None if into is not None else out)
    if res is None:  # no step: the a images
        res = a()
    if res is x:
        res = x.clone()
    if out is not None and res is not out:
        res = out.copy_(res)
    return res, grid_lam


# --------------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------------


@dataclass
class MixedBatch:
    """A mixed batch of ``N`` samples composed from an input batch of ``B``.

    Attributes:
        images: ``(N, C, H, W)`` mixed images (the input's dtype and memory format).
        target_a: labels weighted by ``lam``: int64 ``(N,)``, or soft labels float ``(N, K)``.
        target_b: labels weighted by ``1 - lam`` (same format as ``target_a``).
        lam: float32 ``(N,)`` weight of ``target_a`` (1 for an unmixed sample).
        mask: bool ``(N, P, P)`` grid (True cells from source *a*), or None without a grid.
        index_a, index_b: int64 ``(N,)``, the input rows of sources *a* and *b* (None when unknown, e.g. a
            batch converted from Kornia's labels).
        has_grid: bool ``(N,)``, which samples' ``mask`` is a PatchMix grid (their loss has a patch term); None
            means every sample when ``mask`` is given.
        box: int64 ``(N, 4)`` CutMix region from *b* (top, bottom, left, right; empty where unused) or None.
        blend: float32 ``(N,)`` Mixup pixel weight of *a* (1 where unused) or None.
        label_smoothing: the ``eps`` a mixer asked for; :meth:`to_dense` and ``PatchMixLoss()`` default to it.
    """

    images: Tensor
    target_a: Tensor
    target_b: Tensor
    lam: Tensor
    mask: Tensor | None = None
    index_a: Tensor | None = None
    index_b: Tensor | None = None
    has_grid: Tensor | None = None
    box: Tensor | None = None
    blend: Tensor | None = None
    label_smoothing: float = 0.0

    @classmethod
    def unmixed(cls, x: Tensor, y: Tensor, grid_size: int | None = None, label_smoothing: float = 0.0) -> MixedBatch:
        """A batch of original samples (``lam = 1``, ``target_b = target_a``), with an all-True
        ``(B, P, P)`` mask when ``grid_size`` is given so that patch supervision applies too."""
        B, dev = x.shape[0], x.device
        mask = None if grid_size is None else torch.ones(B, grid_size, grid_size, dtype=torch.bool, device=dev)
        idx = torch.arange(B, device=dev)
        return cls(x, y, y, torch.ones(B, dtype=torch.float32, device=dev), mask, idx, idx,
                   label_smoothing=label_smoothing)

    @classmethod
    def from_dense(cls, images: Tensor, targets: Tensor) -> MixedBatch:
        """A batch whose labels are dense rows ``(B, K)`` (timm's mixed or smoothed targets, any soft labels):
        ``target_a = target_b = targets``, ``lam = 1``; its pairs are unknown (``index_a = index_b = None``)."""
        if targets.dim() != 2 or targets.shape[0] != images.shape[0] or not targets.is_floating_point():
            raise ValueError(f"from_dense: targets must be floating (B, K) with B = {images.shape[0]}, got "
                             f"{targets.dtype} {tuple(targets.shape)}")
        return cls(images, targets, targets, torch.ones(images.shape[0], dtype=torch.float32, device=images.device))

    @classmethod
    def from_kornia(cls, images: Tensor, labels: Tensor, *, correct_lambda: bool = True) -> MixedBatch:
        """A batch from Kornia's labels: ``(B, 3)`` rows ``(label, paired label, lambda)`` of ``RandomMixUpV2``
        (lambda weighs the paired label), or ``(1, B, 3)`` of ``RandomCutMixV2`` (lambda is
        ``1 - cut_area / image_area`` with ``use_correct_lambda=True``, else the cut area; ``num_mix = 1``)."""
        if labels.dim() == 3:
            if labels.shape[0] != 1:
                raise ValueError(f"from_kornia: labels of {labels.shape[0]} cuts per image (num_mix > 1) mix more than "
                                 f"two images; a MixedBatch holds two sources per sample")
            labels, weight_of_a = labels[0], correct_lambda
        else:
            weight_of_a = False
        if labels.dim() != 2 or labels.shape != (images.shape[0], 3):
            raise ValueError(f"from_kornia: labels must be (B, 3) or (1, B, 3) with B = {images.shape[0]}, got "
                             f"{tuple(labels.shape)}")
        lam = labels[:, 2].float()
        return cls(images, labels[:, 0].long(), labels[:, 1].long(), lam if weight_of_a else 1 - lam)

    # ----------------------------------------------------------------------------------------------
    @property
    def dense(self) -> bool:
        """Whether the labels are soft ``(N, K)`` rows rather than class indices."""
        return self.target_a.dim() == 2

    def to_dense(self, num_classes: int, label_smoothing: float | None = None) -> Tensor:
        """The image's soft target, float32 ``(N, num_classes)``: ``lam * A + (1 - lam) * B`` (``A``, ``B`` the
        one-hot rows of the labels, or the soft rows), then ``(1 - eps) * soft + eps / K``: timm's
        ``mixup_target`` and torchvision's label for the same pairs. ``label_smoothing``: default the batch's."""
        eps = self.label_smoothing if label_smoothing is None else float(label_smoothing)
        if not self.dense:
            return soft_targets(self.target_a, self.target_b, self.lam, num_classes, eps)
        if self.target_a.shape[1] != num_classes:
            raise ValueError(f"to_dense: the soft labels have {self.target_a.shape[1]} classes, not {num_classes}")
        lam = self.lam.to(torch.float32)[:, None]
        soft = lam * self.target_a.float() + (1 - lam) * self.target_b.float()
        return soft * (1 - eps) + eps / num_classes if eps else soft

    def soft_targets(self, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
        """Soft labels ``(N, num_classes)`` float32 (:meth:`to_dense` with an explicit ``label_smoothing``)."""
        return self.to_dense(num_classes, label_smoothing)

    def patch_targets(self) -> Tensor:
        """Per-patch labels, row-major: int64 ``(N, P*P)``, or float ``(N, P*P, K)`` for soft labels."""
        if self.mask is None:
            raise ValueError("patch_targets() needs a grid mask; this batch was mixed without one (Mixup/CutMix)")
        if self.dense:
            return torch.where(self.mask.flatten(1)[..., None], self.target_a[:, None], self.target_b[:, None])
        return patch_targets(self.target_a, self.target_b, self.mask)

    def to_kornia(self, format: str = "mixup") -> Tensor:
        """Kornia's labels, float32: ``"mixup"`` gives ``RandomMixUpV2``'s ``(N, 3)`` rows ``(target_a,
        target_b, 1 - lam)``; ``"cutmix"`` gives ``RandomCutMixV2(use_correct_lambda=True)``'s ``(1, N, 3)`` rows
        ``(target_a, target_b, lam)``. Class indices only."""
        if format not in KORNIA_FORMATS:
            raise ValueError(f"to_kornia: format must be one of {KORNIA_FORMATS}, got {format!r}")
        if self.dense:
            raise ValueError("to_kornia: Kornia's labels hold class indices; this batch has soft labels")
        lam = self.lam.float()
        rows = torch.stack([self.target_a.float(), self.target_b.float(), lam if format == "cutmix" else 1 - lam], 1)
        return rows[None] if format == "cutmix" else rows

    # ----------------------------------------------------------------------------------------------
    def apply(self, t: Tensor, *, discrete: bool | None = None) -> Tensor:
        """``t``, a per-sample tensor of the input batch (``(B, C, H, W)``, ``(B, H, W)``, or any ``(B, ...)`` for
        a Mixup-only batch), mixed with this batch's pairs, grids, boxes and blends: a segmentation map (uint8 or
        int64), a second view, a weight map. ``apply(input images)`` reproduces ``images`` exactly.

        A grid applies at any resolution with at least ``P`` pixels a side (the cell rule); a box needs the
        images' ``H x W``. ``discrete``: blended samples take the source with the larger weight instead of a
        rounded blend (default: True for bool tensors only; pass True for class-id maps)."""
        if self.index_b is None:
            raise ValueError("apply: this batch does not know its pairs (index_b is None), e.g. one converted "
                             "from Kornia's labels or dense targets")
        if not isinstance(t, Tensor) or t.dim() < 1:
            raise ValueError(f"apply: t must be a per-sample tensor (B, ...), got {getattr(t, 'shape', type(t))}")
        if self.box is not None and t.shape[-2:] != self.images.shape[-2:]:
            raise ValueError(f"apply: t must have the images' height and width {tuple(self.images.shape[-2:])} "
                             f"for a CutMix box, got {tuple(t.shape)}")
        discrete = (t.dtype == torch.bool) if discrete is None else discrete
        return compose(t, self.index_a, self.index_b, mask=self.mask, box=self.box, blend=self.blend,
                       discrete=discrete)[0]

    def tensors(self) -> dict[str, Tensor | None]:
        """The tensor fields by name (None where unused)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "label_smoothing"}

    def map(self, fn) -> MixedBatch:
        """The same batch with ``fn`` applied to every tensor."""
        changed: dict[str, Any] = {k: None if v is None else fn(v) for k, v in self.tensors().items()}
        return replace(self, **changed)

    def to(self, device, non_blocking: bool = False) -> MixedBatch:
        """The same batch with every tensor on ``device`` (``non_blocking`` from pinned memory)."""
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> MixedBatch:
        """The same batch in pinned memory (a ``DataLoader`` with ``pin_memory=True`` calls this)."""
        return self.map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return self.images.shape[0]

    def __reduce__(self):
        """Pickled (e.g. from a ``DataLoader`` worker to the main process) with the images as a tensor (shared
        memory) and every other CPU tensor as a numpy array inside the message: sharing a tensor costs a shared
        memory segment and a file descriptor each, so seven small shared tensors would cost several times what
        the batch's images do."""
        small = {k: v.numpy() if v.device.type == "cpu" and not v.requires_grad else v
                 for k, v in self.tensors().items() if v is not None and k != "images"}
        return _rebuild_batch, (self.images, small, self.label_smoothing)

    @classmethod
    def cat(cls, batches: Sequence[MixedBatch], offsets: Sequence[int] | None = None) -> MixedBatch:
        """One batch from several (order kept). ``offsets``: where each part's input rows start in the joint
        input (its ``index_a``/``index_b`` are shifted by it). Optional fields present in some parts only are
        filled with their neutral value in the others (grid: all-True mask with ``has_grid`` False; box: empty;
        blend: 1); a grid mask must be in every part or none."""
        if not batches:
            raise ValueError("MixedBatch.cat: nothing to concatenate")
        offsets = list(offsets) if offsets is not None else [0] * len(batches)
        if len({b.label_smoothing for b in batches}) > 1:
            raise ValueError("MixedBatch.cat: the parts ask for different label_smoothing")
        if len({b.mask is None for b in batches}) > 1:
            raise ValueError("MixedBatch.cat: every part needs a grid mask, or none (use MixedBatch.unmixed(x, y, P))")

        def joined(name, neutral):
            parts = [getattr(b, name) for b in batches]
            if all(p is None for p in parts):
                return None
            return torch.cat([p if p is not None else neutral(b) for p, b in zip(parts, batches, strict=True)])

        def ones(b, dtype):
            return torch.ones(len(b), dtype=dtype, device=b.lam.device)

        def shifted(name):  # input rows, moved by each part's offset; None unless every part knows them
            parts = [getattr(b, name) for b in batches]
            if any(p is None for p in parts):
                return None
            return torch.cat([p + o for p, o in zip(parts, offsets, strict=True)])

        def stacked(name):
            return torch.cat([getattr(b, name) for b in batches])

        return cls(stacked("images"), stacked("target_a"), stacked("target_b"), stacked("lam"),
                   mask=joined("mask", None), index_a=shifted("index_a"), index_b=shifted("index_b"),
                   has_grid=joined("has_grid", lambda b: ones(b, torch.bool)),
                   box=joined("box", lambda b: torch.zeros(len(b), 4, dtype=torch.int64, device=b.lam.device)),
                   blend=joined("blend", lambda b: ones(b, torch.float32)),
                   label_smoothing=batches[0].label_smoothing)


def _rebuild_batch(images: Tensor, small: dict, label_smoothing: float) -> MixedBatch:
    fields_ = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in small.items()}
    return MixedBatch(images, label_smoothing=label_smoothing, **fields_)


__all__ = ["KORNIA_FORMATS", "MixedBatch", "blend_pixels", "box_mask", "compose", "rows", "select", "to_dtype"]
