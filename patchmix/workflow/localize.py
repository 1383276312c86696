"""Weakly supervised localisation of trained models (the paper's Table 2 protocol, wsolevaluation's metrics).

A model trained with image labels only is scored by its class activation maps (GT-known: the map of the true
class) on a split with boxes:

* the CAM thresholds are chosen on the box-labelled validation split (wsolevaluation's train-fullsup), once for
  the dataset: per IoU level for MaxBoxAccV2, at IoU 0.5 for MaxBoxAcc;
* the test split then gives MaxBoxAccV2 and MaxBoxAcc as wsolevaluation defines them (the best threshold on the
  split itself), the box accuracy at the thresholds chosen on val, top-1 localisation (the right class and IoU
  >= 0.5 at val's MaxBoxAcc threshold) and, where the split has masks, PxAP.

:func:`localization_scores` is what ``patchmix run`` records per job and ``patchmix eval --localization``
prints; :func:`centre_baseline` is the same protocol for a map that ignores the image.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import data as data_mod
from ..choices import CAM_HEADS
from ..localization import BoxAccumulator, MaskAccumulator, centre_gaussian, class_activation_maps, threshold_boxes
from .stats import CONFIDENCE, paired_table

#: The IoU levels of MaxBoxAccV2 (percent) and the one of MaxBoxAcc.
IOU_LEVELS = (30, 50, 70)
V1_LEVEL = 50

#: (maps (n, H, W) float32 in [0, 1], predicted classes (n,) or None) for a batch (uint8 images, labels).
MapFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]


def model_maps(net: nn.Module, device, head: str = "image") -> MapFn:
    """A :data:`MapFn` of ``net``: GT-known CAMs from ``head``'s classifier and the image head's predictions, from
    one forward pass per batch."""

    def maps(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
        images = data_mod.to_float(x, device)
        cams, logits = class_activation_maps(net, images, y.to(device), head=head, return_logits=True)
        return cams.cpu(), logits.argmax(1).cpu()

    return maps


def centre_maps(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor | None]:
    """The centre baseline's :data:`MapFn`: a centred Gaussian for every image, no prediction."""
    return centre_gaussian(x.shape[0], tuple(x.shape[-2:])), None


def _batches(split: data_mod.Split, batch_size: int) -> Iterator[tuple[Tensor, Tensor, list[np.ndarray], Tensor | None]]:
    """``(uint8 images, labels, boxes, masks or None)`` of ``split`` in order."""
    start = 0
    for x, y in data_mod.batches(split, batch_size, torch.arange(len(split))):
        n = x.shape[0]
        masks = None if split.masks is None else split.masks[start:start + n]
        yield x, y, split.boxes[start:start + n], masks
        start += n


def split_scores(maps: MapFn, split: data_mod.Split, *, batch_size: int = 128, cam_curve_interval: float = 0.01,
                 v1_tau_index: int | None = None) -> dict:
    """The localisation scores of ``maps`` on ``split`` (which must carry boxes). Returns a dict: ``v2``
    (:class:`patchmix.localization.BoxAccuracy` at :data:`IOU_LEVELS`, multi-contour), ``v1`` (at IoU 0.5, the
    largest contour), ``top1`` (fraction, when ``maps`` predicts), ``pxap`` (percent, when the split has masks),
    and with ``v1_tau_index`` (a threshold index chosen elsewhere) ``top1_loc`` (fraction: the right class and
    MaxBoxAcc's IoU >= 0.5 at that threshold) and ``gt_known_at_tau`` (the IoU >= 0.5 part alone)."""
    if split.boxes is None:
        raise ValueError("localisation needs a split with boxes (a wsolevaluation-layout folder or fmnist-loc)")
    v2 = BoxAccumulator(cam_curve_interval=cam_curve_interval, iou_thresholds=IOU_LEVELS, multi_contour=True)
    v1 = BoxAccumulator(cam_curve_interval=cam_curve_interval, iou_thresholds=(V1_LEVEL,), multi_contour=False)
    px = MaskAccumulator(cam_curve_interval=cam_curve_interval) if split.masks is not None else None
    correct = loc_correct = box_correct = 0
    predicts = False
    for x, y, boxes, masks in _batches(split, batch_size):
        cams, pred = maps(x, y)
        v2.update(cams, boxes)
        ious = v1.update(cams, boxes)
        hit = torch.ones_like(y, dtype=torch.bool) if pred is None else pred == y
        if pred is not None:
            predicts = True
            correct += int(hit.sum())
        if v1_tau_index is not None:
            good = torch.from_numpy(ious[:, v1_tau_index] >= V1_LEVEL / 100)
            box_correct += int(good.sum())
            loc_correct += int((good & hit).sum())
        if px is not None:
            px.update(cams, masks == 1, ignore=masks == 255)
    n = len(split)
    out: dict = {"v2": v2.compute(), "v1": v1.compute(), "count": n}
    if predicts:
        out["top1"] = correct / n
    if px is not None:
        out["pxap"] = px.compute()
    if v1_tau_index is not None:
        out["gt_known_at_tau"] = box_correct / n
        if predicts:
            out["top1_loc"] = loc_correct / n
    return out


def _tau_index(acc, level) -> int:
    """The index of ``acc.best_threshold[level]`` among ``acc.thresholds``."""
    return int(np.flatnonzero(acc.thresholds == acc.best_threshold[level])[0])


def localization_scores(maps: MapFn, ds: data_mod.Dataset, *, split: str = "test", batch_size: int = 128,
                        cam_curve_interval: float = 0.01) -> dict:
    """The protocol: thresholds chosen on ``ds.val``, scores on ``ds.<split>``. Returns a flat, JSON-ready dict
    (percentages): ``maxboxacc_v2`` and ``maxboxacc_v2_<delta>`` (the best threshold on the split),
    ``boxacc_v2_val_tau`` (the mean over the IoU levels at the thresholds chosen on val), ``maxboxacc`` (V1),
    ``gt_known_loc`` (IoU >= 0.5 at val's V1 threshold), ``top1_loc`` and ``top1`` (when ``maps`` predicts),
    ``pxap`` (when the split has masks), ``val_maxboxacc_v2``, and ``thresholds`` (what val chose)."""
    val = split_scores(maps, ds.val, batch_size=batch_size, cam_curve_interval=cam_curve_interval)
    tau1 = _tau_index(val["v1"], V1_LEVEL)
    res = split_scores(maps, getattr(ds, split), batch_size=batch_size, cam_curve_interval=cam_curve_interval,
                       v1_tau_index=tau1)
    v2, v1 = res["v2"], res["v1"]
    at_val = [float(v2.curves[i, _tau_index(val["v2"], d)]) for i, d in enumerate(IOU_LEVELS)]
    out = {"split": split, "count": res["count"], "cam_curve_interval": cam_curve_interval,
           "maxboxacc_v2": v2.value, **{f"maxboxacc_v2_{d}": v2.per_iou[d] for d in IOU_LEVELS},
           "boxacc_v2_val_tau": float(np.mean(at_val)), "maxboxacc": v1.per_iou[V1_LEVEL],
           "gt_known_loc": 100 * res["gt_known_at_tau"], "val_maxboxacc_v2": val["v2"].value,
           "thresholds": {"v2": {str(d): val["v2"].best_threshold[d] for d in IOU_LEVELS},
                          "v1": val["v1"].best_threshold[V1_LEVEL]}}
    if "top1" in res:
        out["top1"] = 100 * res["top1"]
        out["top1_loc"] = 100 * res["top1_loc"]
    if "pxap" in res:
        out["pxap"] = res["pxap"]
    return out


def model_localization(net: nn.Module, ds: data_mod.Dataset, device, *, split: str = "test", head: str = "image",
                       batch_size: int = 128, cam_curve_interval: float = 0.01) -> dict:
    """:func:`localization_scores` of ``net`` (put in eval mode) with ``head``'s CAMs."""
    was_training = net.training
    net.eval()
    try:
        return localization_scores(model_maps(net, device, head), ds, split=split, batch_size=batch_size,
                                   cam_curve_interval=cam_curve_interval)
    finally:
        net.train(was_training)


def centre_baseline(ds: data_mod.Dataset, *, split: str = "test", cam_curve_interval: float = 0.01) -> dict:
    """:func:`localization_scores` of the centre Gaussian (no model, no top-1)."""
    return localization_scores(centre_maps, ds, split=split, cam_curve_interval=cam_curve_interval)


def localization_line(scores: dict) -> str:
    """One line of a job's localisation scores."""
    parts = [f"MaxBoxAccV2 {scores['maxboxacc_v2']:.2f} ("
             + "/".join(f"{scores[f'maxboxacc_v2_{d}']:.1f}" for d in IOU_LEVELS) + ")",
             f"at val's thresholds {scores['boxacc_v2_val_tau']:.2f}", f"MaxBoxAcc {scores['maxboxacc']:.2f}"]
    if "top1_loc" in scores:
        parts.append(f"top-1 loc {scores['top1_loc']:.2f}")
    if "pxap" in scores:
        parts.append(f"PxAP {scores['pxap']:.2f}")
    return f"{scores['split']}: " + ", ".join(parts)


#: The scores a localisation table shows per method (percent), in its column order.
SCORE_KEYS = ("top1", "maxboxacc_v2", "maxboxacc_v2_30", "maxboxacc_v2_50", "maxboxacc_v2_70", "boxacc_v2_val_tau",
              "maxboxacc", "top1_loc", "pxap")
#: The scores compared between methods with paired differences.
PAIRED_KEYS = ("maxboxacc_v2", "top1_loc", "top1")


def _score(result: dict, head: str, key: str):
    return ((result.get("localization") or {}).get(head) or {}).get(key)


def localization_summary(results: Sequence[dict], methods: Sequence[str], centre: dict | None = None) -> dict | None:
    """What ``metrics.json`` keeps of a run's localisation (``localization``): per CAM head, each method's
    :data:`SCORE_KEYS` as ``{"mean", "std", "n"}`` over seeds and the paired differences of :data:`PAIRED_KEYS`
    (percentage points, :func:`patchmix.workflow.stats.paired_table`); the centre baseline's scores. None when no
    job was scored."""
    heads = [h for h in CAM_HEADS if any(_score(r, h, "maxboxacc_v2") is not None for r in results)]
    if not heads:
        return None
    out: dict = {"heads": {}, "centre": centre, "confidence": CONFIDENCE,
                 "protocol": "CAM thresholds chosen on val; test scores; MaxBoxAccV2 and MaxBoxAcc take the best "
                             "threshold on test as wsolevaluation defines them"}
    for head in heads:
        rows = {}
        for m in methods:
            cols = {}
            for k in SCORE_KEYS:
                v = [x for r in results if r["method"] == m and (x := _score(r, head, k)) is not None]
                if v:
                    cols[k] = {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                               "n": len(v)}
            if cols:
                rows[m] = cols
        paired = {k: paired_table(results, methods, value=lambda r, k=k, h=head: _score(r, h, k)) for k in PAIRED_KEYS}
        out["heads"][head] = {"summary": rows, "paired": paired}
    return out


def cam_examples(net: nn.Module, split: data_mod.Split, indices: Tensor, tau: float, device, *,
                 cam_curve_interval: float = 0.01) -> dict:
    """What the CAM figure shows of one model on ``split[indices]``: the uint8 images, their CAMs
    ``(n, H, W)``, the GT boxes and the predicted box (the largest contour's at ``tau``, MaxBoxAcc's threshold
    chosen on val)."""
    x, y = split.get(indices)
    was_training = net.training
    net.eval()
    try:
        cams = class_activation_maps(net, data_mod.to_float(x, device), y.to(device)).cpu()
    finally:
        net.train(was_training)
    return {"images": x, "labels": y, "cams": cams, "gt": [split.boxes[i] for i in indices.tolist()],
            "pred": _largest_contour_boxes(cams, tau)}


def _largest_contour_boxes(cams: Tensor, tau: float) -> list[np.ndarray]:
    return [threshold_boxes(c.numpy(), np.array([tau]), multi_contour=False)[0] for c in cams]


def centre_examples(examples: dict, tau: float) -> dict:
    """The centre baseline's row of the CAM figure, on the images of ``examples`` (:func:`cam_examples`), its
    box at ``tau`` (the baseline's own MaxBoxAcc threshold chosen on val)."""
    cams = centre_gaussian(len(examples["cams"]), tuple(examples["cams"].shape[-2:]))
    return dict(examples, cams=cams, pred=_largest_contour_boxes(cams, tau))


def example_indices(split: data_mod.Split, num: int = 8) -> Tensor:
    """The first image of each of the first ``num`` classes (the same images for every method)."""
    labels = split.labels.tolist()
    first = {}
    for i, c in enumerate(labels):
        first.setdefault(c, i)
    return torch.tensor([first[c] for c in sorted(first)][:num], dtype=torch.int64)


__all__ = ["PAIRED_KEYS", "SCORE_KEYS", "cam_examples", "centre_examples", "example_indices", "localization_summary", "IOU_LEVELS", "V1_LEVEL", "centre_baseline", "centre_maps", "localization_line", "localization_scores",
           "model_localization", "model_maps", "split_scores"]
