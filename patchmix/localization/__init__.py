"""Weakly supervised object localisation (WSOL) as clovaai/wsolevaluation measures it (Choe et al., CVPR 2020):
class activation maps, MaxBoxAcc / MaxBoxAccV2 and PxAP with that code's numbers, and the centre baseline.

* :func:`class_activation_maps`: GT-known CAMs ``(N, H, W)`` of any patch-head model.
* :func:`max_box_acc`, :class:`BoxAccumulator`, :func:`best_box_ious`: box accuracy at the best CAM threshold
  (the threshold sweep runs in the op ``patchmix.ops.box_iou_sweep``).
* :func:`pxap`, :class:`MaskAccumulator`: the pixel precision-recall AUC.
* :func:`resize_box`, :func:`box_iou`, :func:`threshold_boxes`, :func:`cam_thresholds`, :func:`quantise`:
  wsolevaluation's conventions as functions.

See docs/localization.md for the definitions.
"""

from .baselines import SIGMA_FRACTION, centre_gaussian
from .boxes import box_iou, cam_thresholds, contour_boxes, quantise, resize_box, threshold_boxes
from .cam import class_activation_maps, feature_maps, normalize_maps
from .metrics import BoxAccumulator, BoxAccuracy, MaskAccumulator, best_box_ious, max_box_acc, pxap

__all__ = [
    "SIGMA_FRACTION", "BoxAccumulator", "BoxAccuracy", "MaskAccumulator", "best_box_ious", "box_iou", "cam_thresholds",
    "centre_gaussian", "class_activation_maps", "contour_boxes", "feature_maps", "max_box_acc", "normalize_maps",
    "pxap", "quantise", "resize_box", "threshold_boxes",
]
