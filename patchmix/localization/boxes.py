"""Score maps and boxes as wsolevaluation handles them: input checks, the uint8 quantisation, the CAM
thresholds, box resizing, and the boxes a map gives at each threshold.

Conventions (clovaai/wsolevaluation, Choe et al., CVPR 2020): a box is integer ``(x0, y0, x1, y1)`` with
inclusive pixel coordinates (``x1 - x0 + 1`` pixels wide); a score map is ``(H, W)`` in ``[0, 1]``; the map is
quantised as ``(s * 255).astype(np.uint8)`` in its own dtype and thresholded at ``int(tau * max)`` with a strict
``>``; the CAM thresholds are ``np.arange(0, 1, cam_curve_interval)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import resize_box
from ..ops.box_iou_sweep import box_iou, contour_boxes, threshold_levels

__all__ = ["box_iou", "cam_thresholds", "contour_boxes", "quantise", "resize_box", "threshold_boxes"]

INSTALL_HINT = "pip install patchmix[localization]"


def cv2_module():
    """OpenCV (``opencv-python-headless``), needed for the single-contour (MaxBoxAcc V1) box only."""
    try:
        import cv2
    except ImportError as e:
        raise ImportError(
            "multi_contour=False (the original MaxBoxAcc: the box of the largest contour by cv2.contourArea) needs "
            f"OpenCV: {INSTALL_HINT} (opencv-python-headless)") from e
    return cv2


def cam_thresholds(cam_curve_interval: float = 0.01) -> np.ndarray:
    """wsolevaluation's CAM thresholds ``np.arange(0, 1, cam_curve_interval)`` -> float64 ``(T,)``."""
    step = float(cam_curve_interval)
    if not (0.0 < step <= 1.0):
        raise ValueError(f"cam_curve_interval must be in (0, 1], got {cam_curve_interval}")
    return np.arange(0, 1, step)


def as_scoremaps(scoremaps, name: str = "scoremaps") -> np.ndarray:
    """``(N, H, W)`` score maps as a floating numpy array in their own dtype (a tensor is moved to the host;
    float16 and bfloat16 tensors become float32, which numpy can multiply), checked: 3-D, ``H, W >= 1``, finite,
    in ``[0, 1]``."""
    if isinstance(scoremaps, torch.Tensor):
        t = scoremaps.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        scoremaps = t.numpy()
    a = np.asarray(scoremaps)
    if a.ndim != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        raise ValueError(f"{name} must have shape (N, H, W) with H, W >= 1, got {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"{name} must hold floats in [0, 1], got dtype {a.dtype}")
    if a.size and not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite (a CAM of NaNs is normalised to zeros first), found NaN or inf")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ValueError(f"{name} must be in [0, 1], got min {a.min()} and max {a.max()}")
    return a


def quantise(scoremaps) -> np.ndarray:
    """wsolevaluation's ``(s * 255).astype(np.uint8)``, computed in the maps' own dtype -> uint8 ``(N, H, W)``."""
    a = as_scoremaps(scoremaps)
    return (a * 255).astype(np.uint8)


def as_boxes(boxes, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A list of ``n`` per-image GT box arrays ``(k_i, 4)`` (a single box may be given as ``(4,)``), checked
    (``k_i >= 1``, integers, non-negative, ``x0 <= x1``, ``y0 <= y1``) -> ``(boxes (M, 4) int64, offsets (n + 1,)
    int64)``, image ``i``'s boxes being ``boxes[offsets[i]:offsets[i + 1]]``."""
    if isinstance(boxes, (np.ndarray, torch.Tensor)) and boxes.ndim == 3:
        boxes = list(boxes)  # (N, k, 4): k boxes per image
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"boxes must be a list of N (k_i, 4) integer arrays, got {type(boxes).__name__}")
    if len(boxes) != n:
        raise ValueError(f"boxes has {len(boxes)} entries for {n} score maps; give one (k_i, 4) array per map")
    arrays = []
    for i, b in enumerate(boxes):
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().numpy()
        a = np.asarray(b)
        if a.ndim == 1 and a.shape[0] == 4:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != 4 or a.shape[0] < 1:
            raise ValueError(f"boxes[{i}] must have shape (k, 4) with k >= 1 (x0, y0, x1, y1), got {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"boxes[{i}] must hold integers (inclusive pixel coordinates), got dtype {a.dtype}")
        a = a.astype(np.int64)
        if (a < 0).any():
            raise ValueError(f"boxes[{i}] has a negative coordinate: {a.tolist()}")
        if (a[:, 2] < a[:, 0]).any() or (a[:, 3] < a[:, 1]).any():
            raise ValueError(f"boxes[{i}] = {a.tolist()} is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1")
        arrays.append(a)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(a) for a in arrays])
    flat = np.concatenate(arrays) if arrays else np.zeros((0, 4), dtype=np.int64)
    return flat, offsets


def _single_contour_box(cv2, binary: np.ndarray) -> np.ndarray:
    """wsolevaluation's V1 box: the contour of largest ``cv2.contourArea`` (the first in OpenCV's order on a
    tie), through ``boundingRect`` -> ``(1, 4)``; ``[[0, 0, 0, 0]]`` without a contour."""
    H, W = binary.shape
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    return np.array([[x, y, min(x + w, W - 1), min(y + h, H - 1)]], dtype=np.int64)


def threshold_boxes(scoremap, thresholds, *, multi_contour: bool = True) -> list[np.ndarray]:
    """The boxes wsolevaluation estimates from one ``(H, W)`` map at each CAM threshold: a list of ``(k, 4)``
    int64 arrays, one per threshold (``multi_contour``: one box per contour, holes included, in this package's
    order; else the single box of the largest contour, via OpenCV). Foreground at ``tau`` is ``q > int(tau *
    q.max())`` for ``q = (s * 255).astype(np.uint8)``."""
    q = quantise(np.asarray(scoremap)[None] if not isinstance(scoremap, torch.Tensor) else scoremap[None])[0]
    cv2 = None if multi_contour else cv2_module()
    out = []
    for level in threshold_levels(int(q.max()), thresholds).tolist():
        binary = q > level
        out.append(contour_boxes(binary) if multi_contour else
                   _single_contour_box(cv2, binary.astype(np.uint8) * 255))
    return out


def single_contour_ious(q: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, cv2) -> np.ndarray:
    """V1 best IoU of one quantised map ``q (H, W)`` uint8 against its GT boxes ``(k, 4)`` at every threshold
    -> ``(T,)`` float64: one OpenCV labelling per distinct foreground, not per threshold.

    The foreground ``q > L`` is the same set for every level ``L`` between two consecutive values present in
    ``q``, so levels are grouped by ``searchsorted(values, L, 'right')`` and each group is labelled once; the IoUs
    are taken in one vectorised call (a call per level was a third of the time).
    """
    levels = threshold_levels(int(q.max()), thresholds)
    groups, inverse = np.unique(np.searchsorted(np.unique(q), levels, side="right"), return_inverse=True)
    level_of_group = np.empty(groups.shape[0], dtype=np.int64)
    level_of_group[inverse] = levels  # any level of a group gives the same foreground
    boxes = np.concatenate([_single_contour_box(cv2, (q > level).astype(np.uint8) * 255)
                            for level in level_of_group.tolist()])
    return box_iou(boxes, gt).max(axis=1)[inverse]
