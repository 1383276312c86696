"""The paper's per-sample mixers: Random PatchMix, Mixup and CutMix, each a :class:`patchmix.Mix` with one method
on, ``mode="elem"`` and no label smoothing (the loss applies it), all returning one :class:`MixedBatch`.

The single-method Mixup and CutMix are :class:`MixupMixer` and :class:`CutMixMixer`: they take one ``alpha``, so
they do not borrow the name of timm's ``Mixup``, whose arguments (``mixup_alpha``, ``cutmix_alpha``, ``mode``,
...) :class:`patchmix.Mix` takes.

Convention for every mixer: output sample ``i`` pairs ``x[i]`` (source *a*) with ``x[perm[i]]`` (source *b*);
``lam[i]`` is the weight of ``target_a[i] = y[i]`` and ``1 - lam[i]`` that of ``target_b[i] = y[perm[i]]``.
For Random PatchMix and CutMix ``lam`` is the realised pixel fraction from ``x[i]`` (exact, never the
drawn Beta value). Sampling is vectorised, per sample, on the input's device, with a fixed number of kernels
and no host read (a CUDA training step does not wait for the GPU here), and reproducible with a
``torch.Generator``: one on the data's device is used directly, one elsewhere seeds a generator there.
"""

from __future__ import annotations

import torch

from . import checks
from .mix import Mix


def _check_alpha(owner: str, alpha: float) -> float:
    """The method's Beta alpha: finite and > 0 (the method is on)."""
    return checks.real(owner, "alpha", alpha, low=0.0, low_open=True)


class RandomPatchMix(Mix):
    """Random PatchMix (paper section 2.3): per sample ``lam_n ~ Beta(alpha, alpha)``, each of the ``P x P``
    cells comes from ``x[i]`` with probability ``lam_n``, the rest from ``x[perm[i]]``; the label weight is
    the realised pixel fraction. With probability ``1 - prob`` a sample is left unmixed (``lam = 1``, all-True
    mask, so it keeps its patch term).

    ``forward(x (B, C, H, W), y (B,)) -> MixedBatch`` with ``images (B, C, H, W)`` and ``mask (B, P, P)``.
    """

    def __init__(self, grid_size: int = 4, alpha: float = 1.0, prob: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(mixup_alpha=0.0, patchmix_alpha=_check_alpha("RandomPatchMix", alpha), grid_size=grid_size, prob=prob,
                         mode="elem", label_smoothing=0.0, generator=generator)
        self.alpha = self.alphas[self.methods[0]]

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, alpha={self.alpha}, prob={self.prob}"


class MixupMixer(Mix):
    """Mixup (Zhang et al.): ``images = lam * x + (1 - lam) * x[perm]`` with a per-sample ``lam ~ Beta``; uint8
    images are blended in float32 and rounded (timm's ``FastCollateMixup``).

    ``forward(x (B, C, H, W), y (B,)) -> MixedBatch`` (``mask`` is None, ``blend`` = ``lam``).
    """

    def __init__(self, alpha: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(mixup_alpha=_check_alpha("MixupMixer", alpha), mode="elem", label_smoothing=0.0, generator=generator)
        self.alpha = self.alphas[self.methods[0]]

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class CutMixMixer(Mix):
    """CutMix (Yun et al.): a box of area ``(1 - lam0) * H * W`` (``lam0 ~ Beta``, per sample), centred
    uniformly and clipped to the image, is pasted from ``x[perm]``; ``lam`` is the exact remaining area.

    ``forward(x (B, C, H, W), y (B,)) -> MixedBatch`` (``mask`` is None, ``box`` the pasted boxes).
    """

    def __init__(self, alpha: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(mixup_alpha=0.0, cutmix_alpha=_check_alpha("CutMixMixer", alpha), mode="elem", label_smoothing=0.0,
                         generator=generator)
        self.alpha = self.alphas[self.methods[0]]

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


__all__ = ["CutMixMixer", "MixupMixer", "RandomPatchMix"]
