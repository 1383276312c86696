"""Class activation maps (CAM, Zhou et al. 2016) of patch-head models, GT-known, as wsolevaluation computes
them (``wsol/resnet.py`` and ``inference.py``).

For image ``n`` with label ``c``: the backbone's last feature map ``f (F, h, w)``, weighted by the classifier's
row ``W[c] (F,)`` and averaged over the channels, ``cam = mean_k W[c, k] f[k]`` (no bias, no ReLU); upsampled
bicubically to the image size, then min-max normalised per image; a constant map or one holding NaN becomes
zeros. The patch head's classifier is linear in the region-pooled features, so its CAM is the same formula with
its own row (``head="patch"``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.head import PatchModel

__all__ = ["class_activation_maps", "feature_maps", "normalize_maps"]

HEADS = ("image", "patch")
RESIZES = ("torch", "opencv")


def _patch_model(model: nn.Module) -> PatchModel:
    """The one :class:`PatchModel` inside ``model`` (itself, or wrapped: ``build_model``'s normalisation, DDP)."""
    found = [m for m in model.modules() if isinstance(m, PatchModel)]
    if len(found) != 1:
        raise ValueError(f"class_activation_maps needs a model holding exactly one PatchModel (create_model, "
                         f"from_torchvision, from_timm, or a wrapper around one), found {len(found)} in "
                         f"{type(model).__name__}")
    return found[0]


def _features_and_output(model: nn.Module, images: Tensor):
    """``(feature map (N, F, h, w), model(images))``: the backbone's output captured by a forward hook on the
    PatchModel's backbone during ``model(images)``, so that whatever a wrapper does first (the normalisation of
    ``training.build_model``) applies."""
    inner = _patch_model(model)
    captured = []
    handle = inner.backbone.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        output = model(images)
    finally:
        handle.remove()
    if len(captured) != 1 or not isinstance(captured[0], Tensor) or captured[0].dim() != 4:
        raise ValueError("the PatchModel's backbone must run once per forward and return a feature map (N, F, h, w)")
    return captured[0], output


@torch.no_grad()
def feature_maps(model: nn.Module, images: Tensor) -> Tensor:
    """The backbone's last feature map ``(N, F, h, w)`` for ``images (N, C, H, W)`` (one forward pass of
    ``model``, a wrapper's normalisation included)."""
    return _features_and_output(model, images)[0]


def normalize_maps(cams: Tensor) -> Tensor:
    """Min-max normalise each map of ``cams (N, H, W)`` to ``[0, 1]``; a constant map or one with a NaN becomes
    zeros (wsolevaluation's ``normalize_scoremap``)."""
    flat = cams.reshape(cams.shape[0], -1)
    lo = flat.amin(1, keepdim=True) if flat.shape[1] else flat.new_zeros(flat.shape[0], 1)
    hi = flat.amax(1, keepdim=True) if flat.shape[1] else flat.new_zeros(flat.shape[0], 1)
    shifted = flat - lo
    span = hi - lo
    bad = torch.isnan(flat).any(1, keepdim=True) | (span == 0) | torch.isnan(span)
    out = torch.where(bad, torch.zeros_like(flat), shifted / torch.where(bad, torch.ones_like(span), span))
    return out.reshape(cams.shape)


def _resize_opencv(cams: Tensor, size: tuple[int, int]) -> Tensor:
    from .boxes import cv2_module

    cv2 = cv2_module()
    maps = cams.detach().cpu().numpy()
    out = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_CUBIC) for m in maps]) if len(maps) \
        else np.zeros((0, *size), dtype=maps.dtype)
    return torch.from_numpy(out.reshape(len(maps), *size)).to(cams.device)


@torch.no_grad()
def class_activation_maps(model: nn.Module, images: Tensor, labels: Tensor, size=None, *, head: str = "image",
                          resize: str = "torch", return_logits: bool = False):
    """GT-known CAMs of ``labels`` for ``images``, normalised to ``[0, 1]`` per image.

    Args:
        model: a :class:`patchmix.models.PatchModel` (``create_model``, ``from_torchvision``, ``from_timm``) or a
            module wrapping exactly one (``training.build_model``'s normalisation). Called in its current mode:
            put it in ``eval()`` first, as for any evaluation.
        images: ``(N, C, H, W)``, as the model takes them.
        labels: int64 ``(N,)`` the classes whose maps to compute (the GT class for GT-known localisation).
        size: ``(H, W)`` or an int for the output maps; default the images' ``(H, W)``.
        head: ``"image"``: the image classifier's weights (``head.fc``: the CAM the WSOL literature and the
            PatchMix paper report); ``"patch"``: the patch classifier's (``head.patch_fc``; the same as
            ``"image"`` when the model shares one classifier).
        resize: ``"torch"``: ``F.interpolate(mode="bicubic", align_corners=False)``; ``"opencv"``:
            ``cv2.resize(INTER_CUBIC)`` per map, as wsolevaluation does (needs OpenCV). Both are the a = -0.75
            cubic with half-pixel centres and replicated borders: the normalised maps differ by float32 rounding
            (at most 1.3e-6 measured at 8 x 8 -> 224 x 224; after quantisation 0.005% of the pixels one level
            apart; ``tests/test_localization.py``).

        return_logits: also return the image logits ``(N, K)`` of the same forward pass (top-1 and the maps
            from one pass).

    Returns:
        float32 ``(N, H, W)`` in ``[0, 1]`` on ``images``' device; with ``return_logits``, ``(maps, logits)``.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor of shape (N, C, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__}")
    labels = torch.as_tensor(labels, device=images.device)
    if labels.dtype not in (torch.int64, torch.int32) or tuple(labels.shape) != (images.shape[0],):
        raise ValueError(f"labels must be integer class indices of shape (N,) = ({images.shape[0]},), got "
                         f"{labels.dtype} {tuple(labels.shape)}")
    if size is None:
        size = tuple(images.shape[-2:])
    elif isinstance(size, int):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with H, W >= 1 (or one int), got {size}")
    inner = _patch_model(model)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= inner.num_classes):
        raise ValueError(f"labels must be class indices in [0, {inner.num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    fc = inner.head.patch_fc if head == "patch" and inner.head.patch_fc is not None else inner.head.fc
    features, output = _features_and_output(model, images)
    features = features.float()  # (N, F, h, w)
    weights = fc.weight.float()[labels.long()]  # (N, F)
    cams = (weights[:, :, None, None] * features).mean(1)  # (N, h, w)
    if resize == "opencv":
        cams = _resize_opencv(cams, size)
    else:
        cams = F.interpolate(cams[:, None], size=size, mode="bicubic", align_corners=False)[:, 0]
    maps = normalize_maps(cams).float()
    if return_logits:
        return maps, (output[0] if isinstance(output, (tuple, list)) else output)
    return maps
