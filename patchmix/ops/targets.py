"""Label helpers for mixed batches (plain PyTorch; they never touch images).

``soft_targets`` gives the image-level soft label (``lam * onehot(a) + (1 - lam) * onehot(b)``), ``patch_targets`` the per-patch
hard labels, patch ``n = r * P + c`` row-major.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .contracts._common import host_checks


def _check_labels(name: str, target: Tensor, num_classes: int | None) -> None:
    if target.dtype != torch.int64:
        raise ValueError(f"{name} must be int64 class indices, got dtype {target.dtype}")
    if target.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(target.shape)}")
    if num_classes is not None and target.numel() and host_checks(target):  # no host read of CUDA labels
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} holds label {lo if lo < 0 else hi}, outside [0, {num_classes})")


def soft_targets(
    target_a: Tensor, target_b: Tensor, lam: Tensor, num_classes: int, label_smoothing: float = 0.0
) -> Tensor:
    """``lam * onehot(target_a) + (1 - lam) * onehot(target_b)``, smoothed as ``(1 - eps) * soft + eps / K``.

    Args: ``target_a``, ``target_b`` int64 ``(N,)``; ``lam`` float ``(N,)`` (weight of ``target_a``).
    Returns: float32 ``(N, num_classes)`` (``lam``'s dtype if it is float64).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    _check_labels("target_a", target_a, num_classes)
    _check_labels("target_b", target_b, num_classes)
    if lam.shape != target_a.shape or target_b.shape != target_a.shape:
        raise ValueError(
            f"target_a, target_b and lam must all have shape (N,), got {tuple(target_a.shape)}, "
            f"{tuple(target_b.shape)}, {tuple(lam.shape)}"
        )
    dtype = torch.float64 if lam.dtype == torch.float64 else torch.float32
    lam = lam.to(dtype)
    soft = torch.zeros(target_a.shape[0], num_classes, dtype=dtype, device=lam.device)
    soft.scatter_add_(1, target_a[:, None], lam[:, None])
    soft.scatter_add_(1, target_b[:, None], (1 - lam)[:, None])
    if label_smoothing:
        soft = soft * (1 - label_smoothing) + label_smoothing / num_classes
    return soft


def patch_targets(target_a: Tensor, target_b: Tensor, mask: Tensor) -> Tensor:
    """Per-patch labels ``(N, P*P)`` int64, row-major: ``target_a`` where ``mask`` is True, else ``target_b``."""
    _check_labels("target_a", target_a, None)
    _check_labels("target_b", target_b, None)
    if mask.dtype != torch.bool or mask.dim() != 3 or mask.shape[0] != target_a.shape[0]:
        raise ValueError(f"mask must be bool of shape (N, P, P) with N = {target_a.shape[0]}, got {mask.dtype} {tuple(mask.shape)}")
    return torch.where(mask.flatten(1), target_a[:, None], target_b[:, None])
