"""``box_iou_sweep``: MaxBoxAccV2's threshold sweep, the op against wsolevaluation's algorithm (OpenCV's
``findContours(RETR_TREE)`` + ``boundingRect`` once per threshold, then the IoU against the GT boxes), one
thread, ``224 x 224`` maps, ``T = 1000`` thresholds (``cam_curve_interval=0.001``: 255 distinct levels on a map
whose max is 255, what wsolevaluation's loop computes 1,000 times) and ``T = 100`` (0.01).

Providers: ``eager``, the OpenCV per-threshold loop (one labelling per distinct integer level, as the per-map
work of wsolevaluation at its best; its own loop relabels repeated levels too), and ``op``, the C++ kernel (one
pass per map for all thresholds). Maps: ``smooth`` (a 14 x 14 random map upsampled bicubically, like a CAM) and
``noisy`` (blurred uniform noise, sigma 0.6 px: many small components and holes). Target: ``op`` at least 10x
faster than ``eager`` at 255 levels.

``test_metric_against_resnet50_forward``: ``max_box_acc`` (V2, ``cam_curve_interval=0.001``) over 1,000 CAM-like
maps of ``224 x 224`` against a ResNet-50 forward pass of 1,000 images at 224, estimated from a batch of 8
(``extra_info``: both in seconds and their ratio), one thread.

Under ``--benchmark-disable`` (CI) every provider runs once on two maps.
"""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from patchmix.localization import max_box_acc
from patchmix.ops import box_iou_sweep

cv2 = pytest.importorskip("cv2")

SIZE = 224
MAPS = 8


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(n)


def make_maps(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` uint8 maps ``(n, 224, 224)`` with max 255."""
    g = torch.Generator().manual_seed(seed)
    if kind == "smooth":
        low = torch.rand(n, 1, 14, 14, generator=g, dtype=torch.float64)
        m = F.interpolate(low, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[:, 0].numpy()
    else:
        rng = np.random.default_rng(seed)
        m = np.stack([ndimage.gaussian_filter(rng.random((SIZE, SIZE)), 0.6) for _ in range(n)])
    lo = m.min((1, 2), keepdims=True)
    hi = m.max((1, 2), keepdims=True)
    return (((m - lo) / (hi - lo)) * 255).astype(np.uint8)


def make_boxes(n: int, seed: int = 0):
    rng = np.random.default_rng(seed + 1)
    boxes = []
    for _ in range(n):
        x0, y0 = rng.integers(0, SIZE // 2, 2)
        w, h = rng.integers(30, SIZE // 2, 2)
        boxes.append((int(x0), int(y0), int(x0 + w), int(y0 + h)))
    return np.array(boxes, dtype=np.int64)


def opencv_sweep(maps: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """wsolevaluation's per-threshold loop, with one OpenCV labelling per distinct integer level."""
    out = np.empty((len(maps), len(thresholds)))
    H, W = maps.shape[1:]
    for n, q in enumerate(maps):
        b = gt[n]
        levels = (thresholds * float(q.max())).astype(np.int64)
        done = {}
        for t, level in enumerate(levels.tolist()):
            if level not in done:
                _, binary = cv2.threshold(q, level, 255, cv2.THRESH_BINARY)
                contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
                rects = np.array([cv2.boundingRect(c) for c in contours] or [(0, 0, 0, 0)], dtype=np.int64)
                x0, y0 = rects[:, 0], rects[:, 1]
                x1 = np.minimum(x0 + rects[:, 2], W - 1) if contours else x0
                y1 = np.minimum(y0 + rects[:, 3], H - 1) if contours else y0
                iw = np.maximum(0, np.minimum(x1, b[2]) - np.maximum(x0, b[0]) + 1)
                ih = np.maximum(0, np.minimum(y1, b[3]) - np.maximum(y0, b[1]) + 1)
                inter = iw * ih
                union = (x1 - x0 + 1) * (y1 - y0 + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
                done[level] = float((inter / union).max())
            out[n, t] = done[level]
    return out


@pytest.mark.parametrize("interval", [0.001, 0.01])
@pytest.mark.parametrize("kind", ["smooth", "noisy"])
@pytest.mark.parametrize("provider", ["op", "eager"])
def test_box_iou_sweep(benchmark, provider, kind, interval):
    n = 2 if benchmark.disabled else MAPS
    maps = make_maps(kind, n)
    gt = make_boxes(n)
    thresholds = np.arange(0, 1, interval)
    benchmark.group = f"box_iou_sweep {kind} 224x224 T={len(thresholds)} ({n} maps)"
    if provider == "op":
        args = (torch.from_numpy(maps), torch.from_numpy(gt), torch.arange(n + 1, dtype=torch.int64),
                torch.from_numpy(thresholds))
        out = benchmark.pedantic(lambda: box_iou_sweep(*args), rounds=1 if benchmark.disabled else 5, iterations=1)
        assert np.array_equal(out.numpy(), opencv_sweep(maps, gt, thresholds))
    else:
        benchmark.pedantic(lambda: opencv_sweep(maps, gt, thresholds), rounds=1 if benchmark.disabled else 3,
                           iterations=1)
    benchmark.extra_info["ms_per_map"] = None if benchmark.disabled else 1e3 * benchmark.stats.stats.median / n


def test_metric_against_resnet50_forward(benchmark):
    from patchmix.models import create_model

    n_maps = 16 if benchmark.disabled else 1000
    maps = make_maps("smooth", n_maps, seed=3).astype(np.float32) / 255
    boxes = [b[None] for b in make_boxes(n_maps, seed=3)]
    result = {}

    def metric():
        t0 = time.perf_counter()
        max_box_acc(maps, boxes, cam_curve_interval=0.001)
        result["metric_s"] = time.perf_counter() - t0

    benchmark.pedantic(metric, rounds=1, iterations=1)
    model = create_model("resnet50", 1000).eval()
    batch = 2 if benchmark.disabled else 8
    x = torch.rand(batch, 3, SIZE, SIZE)
    with torch.no_grad():
        model(x[:1])  # warm-up
        t0 = time.perf_counter()
        model(x)
        forward_s = (time.perf_counter() - t0) * 1000 / batch
    metric_s = result["metric_s"] * 1000 / n_maps
    benchmark.extra_info.update({"metric_s_per_1000_maps": metric_s, "resnet50_forward_s_per_1000_images": forward_s,
                                 "forward_over_metric": forward_s / metric_s})
    print(f"\nmax_box_acc (V2, T = 1000) on 1,000 maps of 224x224: {metric_s:.2f} s; ResNet-50 forward of 1,000 "
          f"images at 224 (from a batch of {batch}): {forward_s:.1f} s; ratio {forward_s / metric_s:.1f}x (one thread)")
