"""Contract of ``patchmix::box_iou_sweep``: the best wsolevaluation box IoU of every score map at every CAM
threshold (the inner loop of MaxBoxAccV2).

Semantics, for map ``n`` (GT boxes ``boxes[box_offsets[n]:box_offsets[n + 1]]``) and threshold ``t``:

* ``level = (int64)(thresholds[t] * (double) max(scoremaps[n]))`` (wsolevaluation's
  ``int(tau * np.max(map))``), foreground ``scoremaps[n] > level``;
* the estimated boxes are those of OpenCV's ``findContours(RETR_TREE)`` contours: the bounding box of every
  8-connected foreground component, and of every hole (a 4-connected background component that does not touch
  the image border) grown by one pixel on each side; each box ``[x0, x1]`` (rows alike) becomes OpenCV's
  ``boundingRect`` box ``[x0, min(x1 + 1, W - 1)]``; no foreground gives the box ``[0, 0, 0, 0]``;
* ``out[n, t]`` is the best IoU between any estimated box and any GT box, IoU over inclusive pixel boxes
  (``(x1 - x0 + 1) * (y1 - y0 + 1)`` areas; 0 where ``area_a + area_b - intersection <= 0``).

Inputs: ``scoremaps`` uint8 ``(N, H, W)`` (``H, W >= 1``), ``boxes`` int64 ``(M, 4)`` ``(x0, y0, x1, y1)``
inclusive, ``box_offsets`` int64 ``(N + 1,)`` from 0 to ``M``, strictly increasing (every map has a box),
``thresholds`` float64 ``(T,)`` in ``[0, 1]``. Output float64 ``(N, T)``. No autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

OP = "box_iou_sweep"
SCHEMA = "(Tensor scoremaps, Tensor boxes, Tensor box_offsets, Tensor thresholds) -> Tensor"
MAX_COORDINATE = 2**30  # exclusive bound on box coordinates: areas and their sums cannot overflow int64


def check_args(scoremaps: Tensor, boxes: Tensor, box_offsets: Tensor, thresholds: Tensor) -> None:
    """Types, dtypes, shapes and devices (no data is read). Raises ``TypeError``/``ValueError``."""
    for name, t in (("scoremaps", scoremaps), ("boxes", boxes), ("box_offsets", box_offsets),
                    ("thresholds", thresholds)):
        if not isinstance(t, Tensor):
            raise TypeError(f"box_iou_sweep: {name} must be a torch.Tensor, got {type(t).__name__}")
    if scoremaps.dtype != torch.uint8 or scoremaps.dim() != 3:
        raise ValueError(f"box_iou_sweep: scoremaps must be a uint8 tensor of shape (N, H, W) (a [0, 1] map times "
                         f"255, truncated), got {scoremaps.dtype} {tuple(scoremaps.shape)}")
    N, H, W = scoremaps.shape
    if H < 1 or W < 1 or H * W >= 2**31:
        raise ValueError(f"box_iou_sweep: scoremaps must have 1 <= H, W and H * W < 2^31, got {tuple(scoremaps.shape)}")
    if boxes.dtype != torch.int64 or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"box_iou_sweep: boxes must be an int64 tensor of shape (M, 4) (x0, y0, x1, y1), got "
                         f"{boxes.dtype} {tuple(boxes.shape)}")
    if box_offsets.dtype != torch.int64 or tuple(box_offsets.shape) != (N + 1,):
        raise ValueError(f"box_iou_sweep: box_offsets must be an int64 tensor of shape (N + 1,) = ({N + 1},), got "
                         f"{box_offsets.dtype} {tuple(box_offsets.shape)}")
    if thresholds.dtype != torch.float64 or thresholds.dim() != 1:
        raise ValueError(f"box_iou_sweep: thresholds must be a float64 tensor of shape (T,), got "
                         f"{thresholds.dtype} {tuple(thresholds.shape)}")
    for name, t in (("boxes", boxes), ("box_offsets", box_offsets), ("thresholds", thresholds)):
        if t.device != scoremaps.device:
            raise ValueError(f"box_iou_sweep: {name} is on {t.device} but scoremaps is on {scoremaps.device}; "
                             "move them to one device")


def check_data(scoremaps: Tensor, boxes: Tensor, box_offsets: Tensor, thresholds: Tensor) -> None:
    """Host check of the offsets, boxes and thresholds (one read each); ``ValueError`` naming the argument."""
    M = boxes.shape[0]
    off = box_offsets.tolist()
    if off[0] != 0 or off[-1] != M:
        raise ValueError(f"box_iou_sweep: box_offsets must start at 0 and end at M = {M} (the number of boxes), "
                         f"got {off[0]} and {off[-1]}")
    for i in range(len(off) - 1):
        if off[i + 1] < off[i]:
            raise ValueError(f"box_iou_sweep: box_offsets must be non-decreasing, got {off[i]} then {off[i + 1]} "
                             f"at {i}")
        if off[i + 1] == off[i]:
            raise ValueError(f"box_iou_sweep: map {i} has no box (box_offsets[{i}] == box_offsets[{i + 1}]); every "
                             "map needs at least one GT box")
    if M:
        b = boxes.cpu()
        bad = (b < 0).any(1) | (b[:, 2:] >= MAX_COORDINATE).any(1)
        if bad.any():
            j = int(bad.nonzero()[0, 0])
            raise ValueError(f"box_iou_sweep: boxes[{j}] = {tuple(b[j].tolist())} has a coordinate outside [0, 2^30)")
        inverted = (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
        if inverted.any():
            j = int(inverted.nonzero()[0, 0])
            raise ValueError(f"box_iou_sweep: boxes[{j}] = {tuple(b[j].tolist())} is not (x0, y0, x1, y1) with "
                             "x0 <= x1 and y0 <= y1")
    if thresholds.numel():
        th = thresholds.cpu()
        outside = ~((th >= 0) & (th <= 1))  # NaN included
        if outside.any():
            t = int(outside.nonzero()[0, 0])
            raise ValueError(f"box_iou_sweep: thresholds[{t}] = {float(th[t])} is outside [0, 1]")
