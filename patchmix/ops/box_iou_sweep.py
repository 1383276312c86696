"""``patchmix::box_iou_sweep``: the best box IoU of every score map at every CAM threshold, MaxBoxAccV2's
inner loop (wsolevaluation's ``compute_bboxes_from_scoremaps`` with ``multi_contour_eval=True`` and the IoU
against the GT boxes).

Semantics: ``contracts.box_iou_sweep``. ``patchmix.localization`` builds the inputs and the metric.

Kernels: ``box_iou_sweep_cpu`` (``csrc/box_iou_sweep.cpp``: one union-find pass per map over its pixels in
value order, for all thresholds at once) and ``box_iou_sweep_reference`` (below: one labelling per threshold
with ``scipy.ndimage``). CUDA tensors have no kernel of their own (a union-find is sequential per map): they are
copied to the host, swept by the CPU kernel, and the result is copied back (``backends()`` says so). No
autograd: the inputs are integers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .._optional import require
from ._registry import define_op
from .contracts import _common
from .contracts.box_iou_sweep import SCHEMA, check_args, check_data

_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)

# --------------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------------


def box_iou(box_a: np.ndarray, box_b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``box_a (A, 4)`` with every box of ``box_b (B, 4)`` -> ``(A, B)`` float64.

    Boxes are integer ``(x0, y0, x1, y1)`` with inclusive pixel coordinates (a box covers
    ``(x1 - x0 + 1) * (y1 - y0 + 1)`` pixels), as wsolevaluation's ``calculate_multiple_iou``; a pair whose
    ``area_a + area_b - intersection`` is not positive has IoU 0.
    """
    a = np.asarray(box_a, dtype=np.int64)[:, None, :]
    b = np.asarray(box_b, dtype=np.int64)[None, :, :]
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denom = area_a + area_b - inter
    degenerate = denom <= 0
    return np.where(degenerate, 0.0, inter / np.where(degenerate, 1, denom))


def contour_boxes(foreground: np.ndarray) -> np.ndarray:
    """The boxes of OpenCV's ``findContours(RETR_TREE)`` contours of a binary ``(H, W)`` image, each through
    ``boundingRect`` as wsolevaluation clips it: ``(k, 4)`` int64 ``(x0, y0, x1, y1)``, ``[[0, 0, 0, 0]]`` when
    nothing is foreground. Order: the foreground components, then the holes (OpenCV's order differs; the set
    is the same).

    One box per 8-connected foreground component (its bounding box) and per hole, a 4-connected background
    component that does not touch the border (OpenCV pads the image with zeros), whose contour runs through the
    foreground pixels around it: the hole's bounding box grown by one pixel. ``boundingRect`` gives ``(x, y, w,
    h)`` with ``w = x1 - x0 + 1``, and wsolevaluation keeps ``(x, y, min(x + w, W - 1), min(y + h, H - 1))``.
    """
    ndimage = require("scipy.ndimage", "localization", "the box_iou_sweep reference")
    fg = np.asarray(foreground, dtype=bool)
    H, W = fg.shape
    out = []
    for sl in ndimage.find_objects(ndimage.label(fg, _EIGHT)[0]):
        out.append((sl[1].start, sl[0].start, min(sl[1].stop, W - 1), min(sl[0].stop, H - 1)))
    for sl in ndimage.find_objects(ndimage.label(~fg, _FOUR)[0]):
        if sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == H or sl[1].stop == W:
            continue  # touches the border: not a hole
        out.append((sl[1].start - 1, sl[0].start - 1, min(sl[1].stop + 1, W - 1), min(sl[0].stop + 1, H - 1)))
    if not out:
        return np.zeros((1, 4), dtype=np.int64)
    return np.asarray(out, dtype=np.int64)


def threshold_levels(quantised_max: int, thresholds: np.ndarray) -> np.ndarray:
    """wsolevaluation's integer threshold per CAM threshold: ``int(tau * max)`` for a map whose uint8 maximum
    is ``quantised_max`` (float64 product, truncated) -> int64 ``(T,)``."""
    return (np.asarray(thresholds, dtype=np.float64) * float(quantised_max)).astype(np.int64)


def box_iou_sweep_reference(scoremaps: Tensor, boxes: Tensor, box_offsets: Tensor, thresholds: Tensor) -> Tensor:
    """One ``scipy.ndimage`` labelling per map and threshold -> float64 ``(N, T)`` (see the module docstring)."""
    check_args(scoremaps, boxes, box_offsets, thresholds)
    check_data(scoremaps, boxes, box_offsets, thresholds)
    maps = scoremaps.cpu().numpy()
    gt = boxes.cpu().numpy()
    off = box_offsets.tolist()
    th = thresholds.cpu().numpy()
    out = np.zeros((maps.shape[0], th.shape[0]), dtype=np.float64)
    for n, m in enumerate(maps):
        levels = threshold_levels(int(m.max()), th)
        by_level = {}
        for t, level in enumerate(levels.tolist()):
            if level not in by_level:
                by_level[level] = box_iou(contour_boxes(m > level), gt[off[n]:off[n + 1]]).max()
            out[n, t] = by_level[level]
    return torch.from_numpy(out).to(scoremaps.device)


# --------------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------------


def _box_iou_sweep_host_copy(scoremaps: Tensor, boxes: Tensor, box_offsets: Tensor, thresholds: Tensor) -> Tensor:
    """The CUDA registration: the CPU kernel on host copies, the result copied back to the device."""
    out = torch.ops.patchmix.box_iou_sweep(scoremaps.cpu(), boxes.cpu(), box_offsets.cpu(), thresholds.cpu())
    return out.to(scoremaps.device)


box_iou_sweep_op = define_op(
    "box_iou_sweep", SCHEMA, box_iou_sweep_reference, None,
    cuda_impl=(_box_iou_sweep_host_copy, "the CPU kernel on a host copy (no CUDA kernel: a union-find per map)"),
)


@torch.library.register_fake("patchmix::box_iou_sweep")
def _box_iou_sweep_fake(scoremaps, boxes, box_offsets, thresholds):
    return scoremaps.new_empty((scoremaps.shape[0], thresholds.shape[0]), dtype=torch.float64)


def box_iou_sweep(scoremaps: Tensor, boxes: Tensor, box_offsets: Tensor, thresholds: Tensor) -> Tensor:
    """The best wsolevaluation box IoU of every map at every threshold, all thresholds in one pass per map.

    Args:
        scoremaps: uint8 ``(N, H, W)``: score maps in ``[0, 1]`` quantised as wsolevaluation does,
            ``(s * 255).astype(np.uint8)``.
        boxes: int64 ``(M, 4)``: every map's GT boxes ``(x0, y0, x1, y1)`` (inclusive pixels), concatenated.
        box_offsets: int64 ``(N + 1,)``: map ``n``'s boxes are ``boxes[box_offsets[n]:box_offsets[n + 1]]``
            (at least one each).
        thresholds: float64 ``(T,)`` CAM thresholds in ``[0, 1]`` (wsolevaluation: ``np.arange(0, 1, 0.001)``).

    Returns:
        float64 ``(N, T)``: at threshold ``t`` (foreground ``map > int(thresholds[t] * map.max())``), the best IoU
        between a GT box and the box of any contour OpenCV's ``findContours(RETR_TREE)`` would return (see
        ``patchmix.ops.contracts.box_iou_sweep``). On the device of ``scoremaps`` (CUDA inputs are swept on the
        host).

    Bad arguments raise ``TypeError``/``ValueError`` naming the argument before any kernel reads memory.
    """
    check_args(scoremaps, boxes, box_offsets, thresholds)
    if not torch.compiler.is_compiling() and not _common.capturing(scoremaps):
        check_data(scoremaps, boxes, box_offsets, thresholds)
    return box_iou_sweep_op(scoremaps, boxes, box_offsets, thresholds)
