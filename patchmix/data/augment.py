"""``data.augment``: the random crop and horizontal flip of a uint8 or float batch, drawn from an explicit generator.

In this project "augment" means these crops and flips only; the mixers (Mixup, CutMix, PatchMix) live in
:mod:`patchmix.mixing`."""

from __future__ import annotations

import torch
from torch import Tensor

from .dataset import Dataset


def augment_mode(mode: str, ds: Dataset) -> str:
    """``data.augment`` resolved: ``auto`` is the dataset's default (``Dataset.default_augment``): random crop +
    horizontal flip for photos (CIFAR, Tiny ImageNet, folders), a crop without flips for mnist5k, none for the
    8x8 digits. A folder of digits or text gets crop + flip unless you choose ``data.augment=crop``."""
    if mode != "auto":
        return mode
    return ds.default_augment


def augment(x: Tensor, mode: str, generator: torch.Generator, pad: int | None = None) -> Tensor:
    """Random crop (zero padding ``pad``, default ``H // 8``) and, for ``crop-flip``, horizontal flips, of a
    floating or uint8 batch ``(B, C, H, W)``.

    Per sample, vectorised, drawn from ``generator`` (a CPU generator: the draws do not depend on the device).
    """
    if mode == "none":
        return x
    B, C, H, W = x.shape
    pad = max(1, H // 8) if pad is None else pad
    if mode in ("crop", "crop-flip"):
        dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator).to(x.device)
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        rows = (torch.arange(H, device=x.device)[None] + dy[:, None])  # (B, H)
        cols = (torch.arange(W, device=x.device)[None] + dx[:, None])  # (B, W)
        bidx = torch.arange(B, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if mode == "crop-flip":
        flip = (torch.rand(B, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class Augment:
    """``augment(x, mode, generator)`` as a batch transform ``(x, generator) -> x`` for a collate (picklable)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return augment(x, self.mode, generator)
