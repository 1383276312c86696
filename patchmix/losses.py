"""Loss modules. :class:`PatchMixLoss` trains every mixing method through one call.

It is a thin module over the fused op :func:`patchmix.ops.patchmix_cross_entropy` (image + per-patch
cross-entropy with its gradient in one pass); it only unpacks the model's outputs and the :class:`MixedBatch`.
A batch that mixes methods per sample passes per-sample term weights to the same op (:func:`term_weights`: samples
without a grid train the image term alone); soft labels leave the op (:func:`soft_patchmix_cross_entropy`, plain
PyTorch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .mixing import checks
from .mixing.batch import MixedBatch
from .ops import patchmix_cross_entropy
from .ops.contracts.patchmix_cross_entropy import leading_logits
from .ops.patchmix_cross_entropy import REDUCTIONS, _patch_rows


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def term_weights(has_grid: Tensor, image_weight: float, patch_weight: float) -> Tensor:
    """float32 ``(N, 2)``: per sample the weights of ``L_O`` and ``L_P / P^2`` relative to weights 1 and 1:
    ``(image_weight, patch_weight)`` for samples with a grid, ``(1, 0)`` (the image term alone at full weight)
    for the others. Arithmetic on ``has_grid``, so no small tensor is copied to the device."""
    g = has_grid.to(torch.float32)
    return torch.stack([image_weight * g + (1 - g), patch_weight * g], 1)


def check_soft_labels(image_logits: Tensor | None, patch_logits: Tensor | None, batch: MixedBatch) -> None:
    """Soft labels ``(N, K)`` against the logits: the same ``N`` and ``K`` (and ``P*P`` patches as mask cells), else a
    ``ValueError`` naming the argument and both numbers (broadcasting would fail later with a raw RuntimeError,
    or worse, not fail)."""
    N, K = batch.target_a.shape
    if batch.target_b.shape != batch.target_a.shape:
        raise ValueError(f"PatchMixLoss: batch.target_b has shape {tuple(batch.target_b.shape)} but batch.target_a "
                         f"{tuple(batch.target_a.shape)}; soft labels are (N, K) rows")
    for name, t, classes in (("image_logits", image_logits, -1), ("patch_logits", patch_logits, None)):
        if t is None:
            continue
        rows = t if classes == -1 else _patch_rows(t)
        if rows.shape[-1] != K:
            raise ValueError(f"PatchMixLoss: {name} has K = {rows.shape[-1]} classes (shape {tuple(t.shape)}) but the "
                             f"soft labels (batch.target_a) have K = {K}")
        if t.shape[0] != N:
            raise ValueError(f"PatchMixLoss: {name} holds N = {t.shape[0]} samples but the batch {N}")
        if classes is None and batch.mask is not None and rows.shape[1] != batch.mask[0].numel():
            raise ValueError(f"PatchMixLoss: patch_logits has {rows.shape[1]} patches (shape {tuple(t.shape)}) but "
                             f"batch.mask has P*P = {batch.mask[0].numel()} cells")


def soft_patchmix_cross_entropy(image_logits: Tensor | None, patch_logits: Tensor | None, batch: MixedBatch,
                                term_weights: Tensor, label_smoothing: float, reduction: str) -> Tensor:
    """The loss for soft labels (``(N, K)`` rows, e.g. a chain of mixers or timm's dense targets), in PyTorch ops:
    ``w[n, 0] * L_O[n] + w[n, 1] * L_P[n] / P^2`` with soft-target cross-entropies (the target smoothed as
    ``(1 - eps) * t + eps / K``), then ``reduction``. Patch ``p`` takes ``target_a`` where the mask is True, else
    ``target_b``. Logits of another ``N`` or ``K`` than the labels: ``ValueError`` (:func:`check_soft_labels`)."""
    check_soft_labels(image_logits, patch_logits, batch)
    ref = leading_logits(image_logits, patch_logits)
    acc = torch.float64 if ref.dtype == torch.float64 else torch.float32
    K = batch.target_a.shape[1]
    loss = torch.zeros(len(batch), dtype=acc, device=ref.device)
    if image_logits is not None:
        target = batch.to_dense(K, label_smoothing).to(acc)
        loss = loss + term_weights[:, 0].to(acc) * -(target * torch.log_softmax(image_logits.to(acc), -1)).sum(-1)
    if patch_logits is not None:
        rows = _patch_rows(patch_logits).to(acc)
        P2 = rows.shape[1]
        target = batch.patch_targets().to(acc) * (1 - label_smoothing) + label_smoothing / K
        l_p = -(target * torch.log_softmax(rows, -1)).sum((1, 2))
        loss = loss + term_weights[:, 1].to(acc) * l_p / P2
    return _reduce(loss, reduction)


class PatchMixLoss(nn.Module):
    """``L_T = image_weight * L_O + patch_weight * L_P / P**2`` (paper Eq. 3-5; defaults give ``(L_O + L_P/P^2) / 2``).

    ``forward(outputs, batch) -> loss``:

    * ``outputs``: the model's ``(image_logits (N, K), patch_logits)`` with ``patch_logits`` ``(N, K, P, P)``
      (the patch head's natural layout) or ``(N, P*P, K)``, either may be ``None``; a bare tensor means image
      logits only.
    * ``batch``: a :class:`MixedBatch`. Its ``lam``, ``target_a`` and ``target_b`` give the image's soft target;
      its ``mask`` (``(N, P, P)``, True cells from ``target_a``'s image) gives each patch's label.

    Batches without a grid (Mixup, CutMix, ``MixedBatch.unmixed(x, y)`` without ``grid_size``) or models without
    patch logits have no patch term: the patch logits are ignored and the loss is the image term alone at full
    weight, i.e. exactly the soft-target cross-entropy those methods train with (not ``image_weight`` times it,
    which would silently scale their learning rate). ``MixedBatch.unmixed(x, y, P)`` gives plain
    cross-entropy on the image and on every patch. A batch that mixes methods per sample (``has_grid``, from
    :class:`patchmix.Mix` with PatchMix and another method) applies the same rule per sample: ``L_T`` for its
    grid samples, the image term at full weight for the others. Soft labels (``(N, K)`` rows) are trained with
    soft-target cross-entropy (timm's ``SoftTargetCrossEntropy`` when there is no grid).

    Args:
        image_weight, patch_weight: weights of the two terms (>= 0).
        label_smoothing: ``eps`` in ``[0, 1)``; targets become ``(1 - eps) * target + eps / K`` in both terms.
            None (default): the batch's own ``label_smoothing`` (0 unless a :class:`patchmix.Mix` asked for one).
        reduction: ``"mean"`` (over samples), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).
    """

    def __init__(
        self,
        image_weight: float = 0.5,
        patch_weight: float = 0.5,
        label_smoothing: float | None = None,
        reduction: str = "mean",
    ):
        super().__init__()
        self.image_weight = checks.real("PatchMixLoss", "image_weight", image_weight, low=0.0)
        self.patch_weight = checks.real("PatchMixLoss", "patch_weight", patch_weight, low=0.0)
        if reduction not in REDUCTIONS:
            raise ValueError(f"PatchMixLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.label_smoothing = None if label_smoothing is None else checks.label_smoothing("PatchMixLoss",
                                                                                           label_smoothing)
        self.reduction = reduction

    def forward(self, outputs, batch: MixedBatch) -> Tensor:
        if isinstance(outputs, Tensor):
            image_logits, patch_logits = outputs, None
        elif isinstance(outputs, (tuple, list)) and len(outputs) == 2:
            image_logits, patch_logits = outputs
        else:
            raise TypeError(
                "PatchMixLoss: outputs must be the model's (image_logits, patch_logits) pair or an image_logits "
                f"tensor, got {type(outputs).__name__}"
            )
        if not isinstance(batch, MixedBatch):
            raise TypeError(f"PatchMixLoss: batch must be a MixedBatch, got {type(batch).__name__}")
        eps = batch.label_smoothing if self.label_smoothing is None else self.label_smoothing
        image_weight = self.image_weight
        if batch.mask is None or patch_logits is None:
            if image_logits is None:
                raise ValueError(
                    "PatchMixLoss: outputs hold no logits" if patch_logits is None else
                    "PatchMixLoss: the model gave only patch logits, but the batch has no grid mask "
                    "(Mixup/CutMix); patch logits need a PatchMix batch"
                )
            patch_logits = None
            image_weight = 1.0  # the image term alone, at full weight (see the class docstring)
        if batch.dense:
            has_grid = torch.full((len(batch),), patch_logits is not None, dtype=torch.bool, device=batch.lam.device)
            if patch_logits is not None and batch.has_grid is not None:
                has_grid = batch.has_grid
            w = term_weights(has_grid, image_weight, self.patch_weight)
            return soft_patchmix_cross_entropy(image_logits, patch_logits, batch, w, eps, self.reduction)
        if patch_logits is not None and batch.has_grid is not None:  # methods mixed per sample
            if image_logits is None:
                raise ValueError("PatchMixLoss: a batch that mixes methods per sample needs image logits (its samples "
                                 "without a grid train the image term)")
            w = term_weights(batch.has_grid, image_weight, self.patch_weight)
            return patchmix_cross_entropy(
                image_logits, patch_logits, batch.target_a, batch.target_b, batch.lam, batch.mask, term_weights=w,
                image_weight=1.0, patch_weight=1.0, label_smoothing=eps, reduction=self.reduction)
        return patchmix_cross_entropy(
            image_logits, patch_logits, batch.target_a, batch.target_b, batch.lam,
            batch.mask if patch_logits is not None else None,
            image_weight=image_weight, patch_weight=self.patch_weight,
            label_smoothing=eps, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"image_weight={self.image_weight}, patch_weight={self.patch_weight}, "
            f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
        )
