"""MaxBoxAcc, MaxBoxAccV2 and PxAP, with wsolevaluation's numbers (``BoxEvaluator`` and ``MaskEvaluator``).

* :func:`best_box_ious` ``(N, T)``: per map and CAM threshold, the best IoU between an estimated box and a GT
  box (multi-contour through the op ``patchmix.ops.box_iou_sweep``, all thresholds in one pass per map;
  single-contour through OpenCV, one labelling per distinct foreground, maps split across threads).
* :class:`BoxAccumulator` counts, per IoU level ``delta`` and threshold, the maps with ``iou >= delta / 100``;
  :meth:`BoxAccumulator.compute` picks, per IoU level, the threshold with the highest accuracy over the whole
  dataset (never per image). :func:`max_box_acc` is the one-shot form.
* :class:`MaskAccumulator` pools pixel-score histograms over the dataset; :meth:`MaskAccumulator.compute` is
  the area under the precision-recall curve in percent. :func:`pxap` is the one-shot form.

Streaming: the accumulators hold counts only (``(len(iou_thresholds), T)`` integers, or two histograms), so a
50,000-image split is fed batch by batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..ops.box_iou_sweep import box_iou_sweep
from .boxes import as_boxes, as_scoremaps, cam_thresholds, cv2_module, single_contour_ious

__all__ = ["BoxAccumulator", "BoxAccuracy", "MaskAccumulator", "best_box_ious", "max_box_acc", "pxap"]


def best_box_ious(scoremaps, boxes, *, cam_curve_interval: float = 0.01, multi_contour: bool = True) -> np.ndarray:
    """Per map and CAM threshold, the best IoU between an estimated box and one of the map's GT boxes.

    Args:
        scoremaps: ``(N, H, W)`` floats in ``[0, 1]`` (numpy or tensor), quantised in their own dtype as
            ``(s * 255).astype(np.uint8)``.
        boxes: ``N`` integer arrays ``(k_i, 4)``, ``(x0, y0, x1, y1)`` inclusive, ``k_i >= 1``.
        cam_curve_interval: thresholds ``np.arange(0, 1, cam_curve_interval)`` (``T`` of them).
        multi_contour: every contour's box (MaxBoxAccV2), or only the largest contour's (MaxBoxAcc, OpenCV).

    Returns:
        float64 ``(N, T)``. Top-1 localisation reads it at the threshold chosen on the validation split.
    """
    maps = as_scoremaps(scoremaps)
    flat, offsets = as_boxes(boxes, maps.shape[0])
    thresholds = cam_thresholds(cam_curve_interval)
    q = (maps * 255).astype(np.uint8)
    if multi_contour:
        return box_iou_sweep(torch.from_numpy(q), torch.from_numpy(flat), torch.from_numpy(offsets),
                             torch.from_numpy(thresholds)).numpy()
    cv2 = cv2_module()
    out = np.empty((q.shape[0], thresholds.shape[0]), dtype=np.float64)

    def sweep(rows: range) -> None:
        for n in rows:
            out[n] = single_contour_ious(q[n], flat[offsets[n]:offsets[n + 1]], thresholds, cv2)

    # findContours releases the GIL, so the maps are split across torch's intra-op threads (64 maps at least each)
    workers = max(1, min(torch.get_num_threads(), q.shape[0] // 64))
    if workers == 1:
        sweep(range(q.shape[0]))
        return out
    bounds = [q.shape[0] * i // workers for i in range(workers + 1)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(sweep, [range(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]))
    return out


@dataclass(frozen=True)
class BoxAccuracy:
    """A box-accuracy result.

    Attributes:
        value: mean over the IoU levels of the best accuracy, percent (MaxBoxAccV2 with the defaults).
        per_iou: ``{delta: percent}``, the best accuracy at each IoU level.
        best_threshold: ``{delta: tau}``, the first CAM threshold attaining it (numpy's argmax).
        curves: float64 ``(len(iou_thresholds), T)``, accuracy in percent at every CAM threshold.
        thresholds: float64 ``(T,)``, the CAM thresholds.
        count: number of maps.
    """

    value: float
    per_iou: dict
    best_threshold: dict
    curves: np.ndarray
    thresholds: np.ndarray
    count: int


class BoxAccumulator:
    """Streaming MaxBoxAcc / MaxBoxAccV2: :meth:`update` per batch, :meth:`compute` once.

    Args:
        cam_curve_interval: CAM thresholds ``np.arange(0, 1, cam_curve_interval)`` (wsolevaluation's evaluation
            default 0.01; its training default 0.001).
        iou_thresholds: IoU levels in percent; a map is correct at ``delta`` when ``iou >= delta / 100``.
        multi_contour: True: every contour's box (MaxBoxAccV2 with the default levels ``(30, 50, 70)``);
            False: the largest contour's (with ``iou_thresholds=(50,)``, the original MaxBoxAcc; needs OpenCV).
    """

    def __init__(self, *, cam_curve_interval: float = 0.01, iou_thresholds: Sequence[float] = (30, 50, 70),
                 multi_contour: bool = True):
        self.cam_curve_interval = float(cam_curve_interval)
        self.thresholds = cam_thresholds(cam_curve_interval)
        levels = tuple(iou_thresholds)
        if not levels or any(not (0 <= float(d) <= 100) for d in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"iou_thresholds must be distinct IoU levels in [0, 100] (percent), got {iou_thresholds}")
        self.iou_thresholds = levels
        self.multi_contour = bool(multi_contour)
        if not self.multi_contour:
            cv2_module()  # fail at construction, not after the first batch
        self.correct = np.zeros((len(levels), len(self.thresholds)), dtype=np.int64)
        self.count = 0

    def update(self, scoremaps, boxes) -> np.ndarray:
        """Add a batch: ``scoremaps (n, H, W)`` in ``[0, 1]`` and ``n`` GT box arrays ``(k_i, 4)``. Returns the
        batch's best IoUs ``(n, T)`` float64 (see :func:`best_box_ious`)."""
        ious = best_box_ious(scoremaps, boxes, cam_curve_interval=self.cam_curve_interval,
                             multi_contour=self.multi_contour)
        for i, delta in enumerate(self.iou_thresholds):
            self.correct[i] += (ious >= delta / 100).sum(0)
        self.count += ious.shape[0]
        return ious

    def compute(self) -> BoxAccuracy:
        """The accuracy curves and, per IoU level, the best threshold chosen over everything added so far."""
        if self.count == 0:
            raise ValueError("BoxAccumulator.compute(): no score map was added (call update() first)")
        curves = self.correct.astype(np.float64) * 100.0 / float(self.count)
        best = curves.argmax(1)
        per_iou = {d: float(curves[i, best[i]]) for i, d in enumerate(self.iou_thresholds)}
        taus = {d: float(self.thresholds[best[i]]) for i, d in enumerate(self.iou_thresholds)}
        value = float(np.average([curves[i, best[i]] for i in range(len(self.iou_thresholds))]))
        return BoxAccuracy(value, per_iou, taus, curves, self.thresholds.copy(), self.count)


def max_box_acc(scoremaps, boxes, *, cam_curve_interval: float = 0.01, iou_thresholds: Sequence[float] = (30, 50, 70),
                multi_contour: bool = True) -> BoxAccuracy:
    """MaxBoxAccV2 (defaults) or, with ``multi_contour=False, iou_thresholds=(50,)``, MaxBoxAcc, of ``scoremaps
    (N, H, W)`` in ``[0, 1]`` against ``N`` GT box arrays ``(k_i, 4)``: a one-shot :class:`BoxAccumulator`."""
    acc = BoxAccumulator(cam_curve_interval=cam_curve_interval, iou_thresholds=iou_thresholds,
                         multi_contour=multi_contour)
    acc.update(scoremaps, boxes)
    return acc.compute()


def _as_mask(mask, shape: tuple, name: str) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"{name} must have the score maps' shape {shape}, got {m.shape}")
    if m.dtype != bool:
        if m.size and not np.isin(m, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1), found other values")
        m = m.astype(bool)
    return m


class MaskAccumulator:
    """Streaming PxAP (wsolevaluation's ``MaskEvaluator``): pixel-score histograms pooled over the dataset.

    The bins are ``[t_0, t_1), ..., [t_{T-1}, 1), [1, 2), [2, 3]`` (edges: the CAM thresholds, then 1, 2, 3).
    """

    def __init__(self, *, cam_curve_interval: float = 0.01):
        self.thresholds = cam_thresholds(cam_curve_interval)
        self.edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.true_hist = np.zeros(len(self.thresholds) + 2, dtype=np.float64)
        self.false_hist = np.zeros(len(self.thresholds) + 2, dtype=np.float64)
        self.count = 0

    def update(self, scoremaps, masks, ignore=None) -> None:
        """Add a batch: ``scoremaps (n, H, W)`` in ``[0, 1]``, ``masks (n, H, W)`` bool (GT foreground), and
        optionally ``ignore (n, H, W)`` bool: background pixels inside it count neither as positive nor
        negative (wsolevaluation's ignore region, less the foreground)."""
        maps = as_scoremaps(scoremaps)
        fg = _as_mask(masks, maps.shape, "masks")
        bg = ~fg
        if ignore is not None:
            bg &= ~_as_mask(ignore, maps.shape, "ignore")
        self.true_hist += np.histogram(maps[fg], bins=self.edges)[0].astype(np.float64)
        self.false_hist += np.histogram(maps[bg], bins=self.edges)[0].astype(np.float64)
        self.count += maps.shape[0]

    def compute(self) -> float:
        """Area under the pixel precision-recall curve, percent, as ``MaskEvaluator.compute``: points at
        ``score >= 2, >= 1, >= t_{T-1}, ..., >= 0``; ``sum(precision[1:] * diff(recall))`` over the points
        with a prediction."""
        tp = self.true_hist[::-1].cumsum()
        fn = self.true_hist.sum() - tp
        fp = self.false_hist[::-1].cumsum()
        if ((tp + fn) <= 0).all():
            raise ValueError("PxAP: no positive ground-truth pixel in the evaluated maps")
        if ((tp + fp) <= 0).all():
            raise ValueError("PxAP: no positive prediction in the evaluated maps (no pixel was scored)")
        predicted = (tp + fp) != 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = tp / (tp + fp)
            recall = tp / (tp + fn)
        auc = (precision[1:] * np.diff(recall))[predicted[1:]].sum()
        return float(auc * 100)


def pxap(scoremaps, masks, ignore=None, cam_curve_interval: float = 0.01) -> float:
    """PxAP (percent) of ``scoremaps (N, H, W)`` in ``[0, 1]`` against ``masks (N, H, W)`` bool, ``ignore``
    optional ``(N, H, W)`` bool: a one-shot :class:`MaskAccumulator`."""
    acc = MaskAccumulator(cam_curve_interval=cam_curve_interval)
    acc.update(scoremaps, masks, ignore)
    return acc.compute()
