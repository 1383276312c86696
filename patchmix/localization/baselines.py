"""Maps that ignore the image, for the baseline rows of a localisation table."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SIGMA_FRACTION", "centre_gaussian"]

SIGMA_FRACTION = 0.25  # the Gaussian's sigma as a fraction of each side


def centre_gaussian(n: int, size, *, sigma_fraction: float = SIGMA_FRACTION) -> Tensor:
    """The centre baseline: ``n`` copies of an isotropic Gaussian at the image centre, ``(n, H, W)`` float32 in
    ``[0, 1]`` (peak 1 at the centre pixel(s)).

    Pixel ``(i, j)`` holds ``exp(-((i - c_y)^2 / sy^2 + (j - c_x)^2 / sx^2) / 2)`` with ``c = (side - 1) / 2``
    and ``s = sigma_fraction * side`` (isotropic on a square image; on a rectangle the same fraction of each
    side). The maps are min-max normalised as a CAM is. Thresholding it at every CAM threshold gives every
    centred ellipse, so MaxBoxAcc barely depends on ``sigma_fraction``: it only sets how finely the uint8
    quantisation spaces those ellipses.
    """
    if isinstance(size, int):
        size = (size, size)
    H, W = (int(s) for s in size)
    if H < 1 or W < 1 or n < 0:
        raise ValueError(f"centre_gaussian needs n >= 0 and a size (H, W) >= 1, got n = {n}, size = {size}")
    if not (sigma_fraction > 0):
        raise ValueError(f"sigma_fraction must be positive, got {sigma_fraction}")
    y = (torch.arange(H, dtype=torch.float64) - (H - 1) / 2) / (sigma_fraction * H)
    x = (torch.arange(W, dtype=torch.float64) - (W - 1) / 2) / (sigma_fraction * W)
    g = torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))
    span = g.max() - g.min()
    g = (g - g.min()) / span if span > 0 else torch.zeros_like(g)
    return g.float().expand(n, H, W).clone()
