"""Loss modules. :class:`PatchMixLoss` trains every mixing method through one call.

It is a thin module over the fused op :func:`patchmix.ops.patchmix_cross_entropy` (image + per-patch
cross-entropy with its gradient in one pass); it only unpacks the model's outputs and the :class:`MixedBatch`.
"""

from __future__ import annotations

from torch import Tensor, nn

from .augment import MixedBatch
from .ops import patchmix_cross_entropy
from .ops.patchmix_cross_entropy import REDUCTIONS


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
    cross-entropy on the image and on every patch.

    Args:
        image_weight, patch_weight: weights of the two terms (>= 0).
        label_smoothing: ``eps`` in ``[0, 1]``; targets become ``(1 - eps) * target + eps / K`` in both terms.
        reduction: ``"mean"`` (over samples), ``"sum"`` or ``"none"`` (per-sample ``(N,)``).
    """

    def __init__(
        self,
        image_weight: float = 0.5,
        patch_weight: float = 0.5,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        for name, w in (("image_weight", image_weight), ("patch_weight", patch_weight)):
            if not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
                raise ValueError(f"PatchMixLoss: {name} must be a finite number >= 0, got {w!r}")
        if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"PatchMixLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"PatchMixLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.image_weight = float(image_weight)
        self.patch_weight = float(patch_weight)
        self.label_smoothing = float(label_smoothing)
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
        return patchmix_cross_entropy(
            image_logits, patch_logits, batch.target_a, batch.target_b, batch.lam,
            batch.mask if patch_logits is not None else None,
            image_weight=image_weight, patch_weight=self.patch_weight,
            label_smoothing=self.label_smoothing, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"image_weight={self.image_weight}, patch_weight={self.patch_weight}, "
            f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"
        )
