"""patchmix.localization: golden cases derived by hand, exactness against an OpenCV implementation of
wsolevaluation's BoxEvaluator written here (V2 and V1, 100 and 1000 thresholds, maps nobody tuned), PxAP against
a numpy transcription of MaskEvaluator's formula, and CAMs against their formula."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from patchmix.localization import (
    BoxAccumulator,
    MaskAccumulator,
    best_box_ious,
    box_iou,
    cam_thresholds,
    centre_gaussian,
    class_activation_maps,
    max_box_acc,
    normalize_maps,
    pxap,
    quantise,
    resize_box,
    threshold_boxes,
)
from patchmix.models import create_model, from_timm

try:
    import cv2
except ImportError:  # the OpenCV comparisons skip; everything else runs without it
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="opencv-python-headless is not installed")

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------------------------
# golden cases, derived by hand. Quantised values: 0.3 -> 76 (76.5 truncated), 0.5 -> 127, 0.7 -> 178, 1.0 -> 255.
# Thresholds np.arange(0, 1, 0.25) on a map with max 255: levels int(tau * 255) = 0, 63, 127, 191.
# ---------------------------------------------------------------------------------------------------------------

UNIMODAL = np.array([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                     [0.0, 0.3, 0.3, 0.3, 0.0, 0.0],
                     [0.0, 0.3, 0.7, 0.5, 0.3, 0.0],
                     [0.0, 0.3, 0.5, 1.0, 0.3, 0.0],
                     [0.0, 0.0, 0.0, 0.3, 0.3, 0.0]])  # H = 5, W = 6

# A single pixel at (0, 0), a ring around the hole (2, 3), a vertical pair on the right edge, a horizontal pair
# bottom left.
MULTIMODAL = np.array([[0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                       [0.0, 0.0, 0.7, 0.7, 0.7, 0.0, 0.0],
                       [0.0, 0.0, 0.7, 0.0, 0.7, 0.0, 0.0],
                       [0.0, 0.0, 0.7, 0.7, 0.7, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                       [0.3, 0.3, 0.0, 0.0, 0.0, 0.0, 1.0]])  # H = 6, W = 7
TAUS = np.arange(0, 1, 0.25)


def as_sets(boxes):
    return [sorted(map(tuple, b.tolist())) for b in boxes]


@needs_cv2
def test_unimodal_boxes_by_hand():
    # level 0 and 63: every nonzero pixel, one component x 1..4, y 1..4 -> (1, 1, min(4 + 1, 5), min(4 + 1, 4));
    # level 127: the 178 at (x 2, y 2) and the 255 at (3, 3), diagonal neighbours: x 2..3, y 2..3 -> (2, 2, 4, 4);
    # level 191: the 255 alone -> (3, 3, 4, 4). No hole: all background reaches the border.
    expected = [[(1, 1, 5, 4)], [(1, 1, 5, 4)], [(2, 2, 4, 4)], [(3, 3, 4, 4)]]
    assert as_sets(threshold_boxes(UNIMODAL, TAUS)) == expected
    assert as_sets(threshold_boxes(UNIMODAL, TAUS, multi_contour=False)) == expected


@needs_cv2
def test_multimodal_boxes_by_hand():
    # level 0 and 63: the pixel (0, 0) -> (0, 0, 1, 1); the ring x 2..4, y 1..3 -> (2, 1, 5, 4); its hole (3, 2)
    # grown by one -> x 2..4, y 1..3 -> the same (2, 1, 5, 4); the right pair x 6, y 4..5 -> (6, 4, min(7, 6),
    # min(6, 5)) = (6, 4, 6, 5); the bottom pair x 0..1, y 5 -> (0, 5, 2, 5).
    # level 127: the 0.5 pixel and the 0.3 pair drop out; level 191: only the 1.0 pair.
    full = sorted([(0, 0, 1, 1), (2, 1, 5, 4), (2, 1, 5, 4), (6, 4, 6, 5), (0, 5, 2, 5)])
    expected = [full, full, sorted([(2, 1, 5, 4), (2, 1, 5, 4), (6, 4, 6, 5)]), [(6, 4, 6, 5)]]
    assert as_sets(threshold_boxes(MULTIMODAL, TAUS)) == expected
    # V1: the largest contour by area. The ring's contours enclose 2 x 2 (pixel centres); the others are lines
    # (area 0). Level 191 has one contour.
    single = as_sets(threshold_boxes(MULTIMODAL, TAUS, multi_contour=False))
    assert single == [[(2, 1, 5, 4)], [(2, 1, 5, 4)], [(2, 1, 5, 4)], [(6, 4, 6, 5)]]


@needs_cv2
def test_all_zero_map_gives_the_empty_box():
    assert as_sets(threshold_boxes(np.zeros((3, 4)), TAUS)) == [[(0, 0, 0, 0)]] * 4
    assert as_sets(threshold_boxes(np.zeros((3, 4)), TAUS, multi_contour=False)) == [[(0, 0, 0, 0)]] * 4


def test_box_iou_by_hand():
    # (0, 0, 3, 1): 4 x 2 = 8 pixels; (2, 1, 5, 4): 4 x 4 = 16; overlap x 2..3, y 1: 2 pixels -> 2 / 22
    assert box_iou(np.array([[0, 0, 3, 1]]), np.array([[2, 1, 5, 4]]))[0, 0] == 2 / 22
    # identical boxes, disjoint boxes, and two one-pixel boxes at the origin (area 1 each: IoU 1)
    ious = box_iou(np.array([[1, 1, 3, 3], [0, 0, 0, 0]]), np.array([[1, 1, 3, 3], [5, 5, 6, 6], [0, 0, 0, 0]]))
    assert ious.dtype == np.float64 and ious.shape == (2, 3)
    assert ious.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_resize_box_by_hand():
    # (10, 20, 30, 40) in a 100 x 50 (width x height) image, to 224 x 224: x * 2.24, y * 4.48, truncated:
    # 22.4 -> 22, 89.6 -> 89, 67.2 -> 67, 179.2 -> 179
    assert resize_box((10, 20, 30, 40), (100, 50), (224, 224)).tolist() == [22, 89, 67, 179]
    assert resize_box((1, 2, 1, 2), (3, 3), (3, 3)).tolist() == [1, 2, 1, 2]
    assert resize_box([[10, 20, 30, 40]], (100, 50), (224, 224)).tolist() == [[22, 89, 67, 179]]
    with pytest.raises(ValueError, match="box"):
        resize_box((3, 0, 1, 2), (10, 10), (5, 5))


def box_mask(H, W, boxes):
    m = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1 + 1, x0:x1 + 1] = True
    return m


@needs_cv2
def test_oracle_map_scores_100():
    # The GT mask as the map. Its box is one pixel wider and taller than the GT box (boundingRect's x + w), so the
    # IoU of a w x h box is w h / ((w + 1)(h + 1)): 36 / 49 = 0.73 >= 0.7 for 6 x 6 boxes and up.
    rng = np.random.default_rng(0)
    maps, boxes = [], []
    for _ in range(8):
        x0, y0 = rng.integers(0, 20, 2)
        w, h = rng.integers(6, 12, 2)
        b = [(int(x0), int(y0), int(x0 + w - 1), int(y0 + h - 1))]
        maps.append(box_mask(40, 40, b).astype(np.float64))
        boxes.append(np.array(b))
    r = max_box_acc(np.stack(maps), boxes)
    assert r.value == 100.0 and r.per_iou == {30: 100.0, 50: 100.0, 70: 100.0}
    assert r.best_threshold == {30: 0.0, 50: 0.0, 70: 0.0}
    assert max_box_acc(np.stack(maps), boxes, multi_contour=False, iou_thresholds=(50,)).value == 100.0
    masks = np.stack(maps).astype(bool)
    assert pxap(np.stack(maps), masks) == 100.0


def test_constant_maps():
    # all zeros: the box (0, 0, 0, 0) at every threshold; any constant > 0: the whole image, (0, 0, W - 1, H - 1)
    whole = [np.array([[0, 0, 9, 7]])]
    corner = [np.array([[0, 0, 0, 0]])]
    assert max_box_acc(np.zeros((1, 8, 10)), corner).value == 100.0
    assert max_box_acc(np.zeros((1, 8, 10)), whole).value == 0.0  # IoU 1/80 at every threshold
    for c in (0.2, 1.0):
        r = max_box_acc(np.full((1, 8, 10), c), whole)
        assert r.value == 100.0 and r.curves.min() == 100.0


# ---------------------------------------------------------------------------------------------------------------
# exactness against OpenCV
# ---------------------------------------------------------------------------------------------------------------


def iou_matrix(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            inter = max(0, min(p[2], q[2]) - max(p[0], q[0]) + 1) * max(0, min(p[3], q[3]) - max(p[1], q[1]) + 1)
            union = (p[2] - p[0] + 1) * (p[3] - p[1] + 1) + (q[2] - q[0] + 1) * (q[3] - q[1] + 1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


class OpenCVBoxEvaluator:
    """wsolevaluation's BoxEvaluator with OpenCV, one findContours per threshold (written from its definition)."""

    def __init__(self, interval, iou_levels, multi_contour):
        self.thresholds = list(np.arange(0, 1, interval))
        self.levels = iou_levels
        self.multi = multi_contour
        self.correct = {d: np.zeros(len(self.thresholds)) for d in iou_levels}
        self.count = 0

    def boxes(self, scoremap, tau):
        q = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
        H, W = scoremap.shape
        _, binary = cv2.threshold(src=q, thresh=int(tau * np.max(q)), maxval=255, type=cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if not contours:
            return [(0, 0, 0, 0)]
        if not self.multi:
            contours = [max(contours, key=cv2.contourArea)]
        out = []
        for c in contours:
            x, y, w, h = cv2.boundingRect(c)
            out.append((x, y, min(x + w, W - 1), min(y + h, H - 1)))
        return out

    def accumulate(self, scoremap, gt):
        best = np.array([iou_matrix(self.boxes(scoremap, tau), gt).max() for tau in self.thresholds])
        for d in self.levels:
            self.correct[d][np.where(best >= d / 100)[0]] += 1
        self.count += 1

    def compute(self):
        return [(self.correct[d] * 100. / float(self.count)).max() for d in self.levels]


def untuned_maps(rng, n, H, W, dtype):
    """Multi-blob smoothed noise, rings with holes and islands, and sharp noise, each normalised to [0, 1]."""
    maps = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            m = ndimage.gaussian_filter(rng.random((H, W)), rng.uniform(1.0, 3.0))
        elif kind == 1:
            yy, xx = np.mgrid[:H, :W]
            r = np.hypot(yy - rng.uniform(0, H), xx - rng.uniform(0, W))
            m = np.cos(r * rng.uniform(0.4, 1.2)) * np.exp(-r / (0.6 * max(H, W)))
        else:
            m = ndimage.gaussian_filter(rng.random((H, W)), 0.6)
        m = (m - m.min()) / (m.max() - m.min())
        maps.append(m.astype(dtype))
    return np.stack(maps)


def untuned_boxes(rng, n, H, W):
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 3))  # one or two GT boxes
        bs = []
        for _ in range(k):
            x0, x1 = sorted(rng.integers(0, W, 2).tolist())
            y0, y1 = sorted(rng.integers(0, H, 2).tolist())
            bs.append((x0, y0, x1, y1))
        out.append(np.array(bs))
    return out


@needs_cv2
@pytest.mark.parametrize("multi_contour", [True, False])
@pytest.mark.parametrize("interval", [0.01, 0.001])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_box_acc_equals_opencv_box_evaluator(multi_contour, interval, dtype):
    rng = np.random.default_rng(int(multi_contour) * 4 + int(interval == 0.001) * 2 + int(dtype == np.float32))
    H, W = 21, 27  # odd sizes
    n = 12 if interval == 0.01 else 6
    maps = untuned_maps(rng, n, H, W, dtype)
    boxes = untuned_boxes(rng, n, H, W)
    levels = (30, 50, 70) if multi_contour else (50,)
    oracle = OpenCVBoxEvaluator(interval, levels, multi_contour)
    for m, b in zip(maps, boxes, strict=True):
        oracle.accumulate(m, b)
    expected = oracle.compute()
    r = max_box_acc(maps, boxes, cam_curve_interval=interval, iou_thresholds=levels, multi_contour=multi_contour)
    assert [r.per_iou[d] for d in levels] == expected
    assert r.value == np.average(expected)
    for i, d in enumerate(levels):
        curve = oracle.correct[d] * 100. / float(oracle.count)
        assert np.array_equal(r.curves[i], curve)
        assert r.best_threshold[d] == oracle.thresholds[int(np.argmax(curve))]
    # a tensor in the same dtype gives the same numbers
    t = max_box_acc(torch.from_numpy(maps), boxes, cam_curve_interval=interval, iou_thresholds=levels,
                    multi_contour=multi_contour)
    assert t.per_iou == r.per_iou and np.array_equal(t.curves, r.curves)


@needs_cv2
def test_single_contour_ious_per_map_equal_opencv_per_threshold(monkeypatch):
    """The V1 sweep groups thresholds by distinct foreground and splits the maps across threads: on maps with few
    distinct values (where many thresholds share a foreground) and enough maps for two threads, every map's IoU at
    every threshold is the per-threshold OpenCV loop's."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    rng = np.random.default_rng(7)
    n, H, W = 130, 13, 17
    maps = untuned_maps(rng, n, H, W, np.float64)
    maps[::2] = np.round(maps[::2] * rng.integers(1, 5, (n + 1) // 2)[:, None, None]) / 4  # 2 to 5 values
    boxes = untuned_boxes(rng, n, H, W)
    oracle = OpenCVBoxEvaluator(0.01, (50,), multi_contour=False)
    got = best_box_ious(maps, boxes, cam_curve_interval=0.01, multi_contour=False)
    for i in (0, 1, 2, 63, 64, 65, 128, 129):  # both threads' shares and their edges
        expected = [iou_matrix(oracle.boxes(maps[i], tau), boxes[i]).max() for tau in oracle.thresholds]
        assert got[i].tolist() == expected, i


def test_float32_quantises_in_float32():
    # 0.2 * 255 is 51.00000000000001 in float64 but exactly 51 in float32; pick a value whose product truncates
    # differently: the two dtypes must each give their own numpy result
    for v in np.linspace(0, 1, 1001):
        for dt in (np.float32, np.float64):
            a = np.full((1, 1, 1), v, dtype=dt)
            assert quantise(a)[0, 0, 0] == (a * 255).astype(np.uint8)[0, 0, 0]


def test_streaming_equals_one_shot():
    rng = np.random.default_rng(3)
    maps = untuned_maps(rng, 10, 19, 17, np.float64)
    boxes = untuned_boxes(rng, 10, 19, 17)
    acc = BoxAccumulator()
    parts = [acc.update(maps[i:i + 3], boxes[i:i + 3]) for i in range(0, 10, 3)]
    whole = max_box_acc(maps, boxes)
    streamed = acc.compute()
    assert streamed.value == whole.value and np.array_equal(streamed.curves, whole.curves)
    assert np.array_equal(np.concatenate(parts), best_box_ious(maps, boxes))
    assert streamed.count == 10


def test_metric_input_errors():
    good = np.zeros((2, 4, 4))
    boxes = [np.array([[0, 0, 1, 1]])] * 2
    with pytest.raises(ValueError, match="scoremaps must have shape"):
        max_box_acc(np.zeros((4, 4)), boxes)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        max_box_acc(good + 1.5, boxes)
    with pytest.raises(ValueError, match="finite"):
        max_box_acc(np.full((2, 4, 4), np.nan), boxes)
    with pytest.raises(TypeError, match="floats"):
        max_box_acc(good.astype(np.uint8), boxes)
    with pytest.raises(ValueError, match="2 entries for 1"):
        max_box_acc(good[:1], boxes)
    with pytest.raises(ValueError, match=r"boxes\[1\] must have shape"):
        max_box_acc(good, [boxes[0], np.zeros((0, 4), dtype=np.int64)])
    with pytest.raises(ValueError, match="negative"):
        max_box_acc(good, [boxes[0], np.array([[-1, 0, 1, 1]])])
    with pytest.raises(ValueError, match="x0 <= x1"):
        max_box_acc(good, [boxes[0], np.array([[2, 0, 1, 1]])])
    with pytest.raises(TypeError, match="integers"):
        max_box_acc(good, [boxes[0], np.array([[0.5, 0, 1, 1]])])
    with pytest.raises(ValueError, match="iou_thresholds"):
        max_box_acc(good, boxes, iou_thresholds=(150,))
    with pytest.raises(ValueError, match="cam_curve_interval"):
        cam_thresholds(0)
    with pytest.raises(ValueError, match="no score map"):
        BoxAccumulator().compute()


def test_missing_opencv_is_one_clear_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_cv2(name, *a, **k):
        if name == "cv2":
            raise ImportError("No module named 'cv2'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cv2)
    with pytest.raises(ImportError, match=r"pip install patchmix\[localization\]"):
        max_box_acc(np.zeros((1, 3, 3)), [np.array([[0, 0, 1, 1]])], multi_contour=False)
    # V2 needs no OpenCV
    assert max_box_acc(np.zeros((1, 3, 3)), [np.array([[0, 0, 0, 0]])]).value == 100.0


# ---------------------------------------------------------------------------------------------------------------
# PxAP
# ---------------------------------------------------------------------------------------------------------------


def mask_evaluator_auc(maps, masks, ignores, interval):
    """MaskEvaluator's formula in numpy: pooled histograms, then the PR AUC over the predicted points."""
    thresholds = list(np.arange(0, 1, interval))
    edges = np.append(thresholds, [1.0, 2.0, 3.0])
    true_hist = np.zeros(len(thresholds) + 2)
    false_hist = np.zeros(len(thresholds) + 2)
    for m, fg, ig in zip(maps, masks, ignores, strict=True):
        gt = fg.astype(np.uint8) + 255 * (ig & ~fg).astype(np.uint8)
        true_hist += np.histogram(m[gt == 1], bins=edges)[0]
        false_hist += np.histogram(m[gt == 0], bins=edges)[0]
    tp = true_hist[::-1].cumsum()
    fn = true_hist.sum() - tp
    fp = false_hist[::-1].cumsum()
    nz = (tp + fp) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision, recall = tp / (tp + fp), tp / (tp + fn)
    return (precision[1:] * np.diff(recall))[nz[1:]].sum() * 100


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pxap_equals_mask_evaluator_formula(dtype):
    rng = np.random.default_rng(4)
    maps = untuned_maps(rng, 6, 20, 24, dtype)
    masks = np.stack([ndimage.gaussian_filter(rng.random((20, 24)), 2) > 0.5 for _ in range(6)])
    ignores = np.stack([box_mask(20, 24, [(3, 2, 15, 12)]) for _ in range(6)])
    for ig in (np.zeros_like(masks), ignores):
        for interval in (0.01, 0.001):
            expected = mask_evaluator_auc(maps, masks, ig, interval)
            assert pxap(maps, masks, ig, cam_curve_interval=interval) == expected
            acc = MaskAccumulator(cam_curve_interval=interval)
            acc.update(maps[:4], masks[:4], ig[:4])
            acc.update(maps[4:], masks[4:], ig[4:])
            assert acc.compute() == expected


def test_pxap_ignore_region_and_errors():
    # GT: the left half; the map scores the left half and a patch of the right half; ignoring that patch gives 100
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, :, :4] = True
    m = masks.astype(np.float64)
    m[0, 2:4, 5:7] = 1.0
    assert pxap(m, masks) < 100.0
    ignore = np.zeros_like(masks)
    ignore[0, 2:4, 5:7] = True
    assert pxap(m, masks, ignore) == 100.0
    # a constant map: precision = the positive fraction at every point: AUC = 100 * 32 / 64
    assert pxap(np.full((1, 8, 8), 0.5), masks) == 50.0
    with pytest.raises(ValueError, match="no positive ground-truth"):
        pxap(m, np.zeros_like(masks))
    with pytest.raises(ValueError, match="masks must have"):
        pxap(m, masks[0])


# ---------------------------------------------------------------------------------------------------------------
# CAM
# ---------------------------------------------------------------------------------------------------------------


def cam_by_hand(features, weight, labels, size):
    maps = []
    for f, c in zip(features, labels, strict=True):
        cam = sum(weight[c, k] * f[k] for k in range(f.shape[0])) / f.shape[0]  # (h, w)
        up = torch.nn.functional.interpolate(cam[None, None], size=size, mode="bicubic", align_corners=False)[0, 0]
        lo, hi = up.min(), up.max()
        maps.append(torch.zeros_like(up) if hi == lo else (up - lo) / (hi - lo))
    return torch.stack(maps)


@pytest.mark.parametrize("name,channels,size", [("small_cnn", 1, 16), ("resnet32", 3, 32), ("small_resnet", 3, 32)])
@pytest.mark.parametrize("head", ["image", "patch"])
def test_cam_equals_the_formula(name, channels, size, head):
    torch.manual_seed(0)
    model = create_model(name, 5, grid_size=2, in_channels=channels).eval()
    x = torch.rand(3, channels, size, size)
    labels = torch.tensor([0, 4, 2])
    cams = class_activation_maps(model, x, labels, head=head)
    assert cams.shape == (3, size, size) and cams.dtype == torch.float32
    assert cams.min() >= 0 and cams.max() <= 1
    fc = model.head.fc if head == "image" else model.head.patch_fc
    with torch.no_grad():
        expected = cam_by_hand(model.backbone(x), fc.weight, labels, (size, size))
    torch.testing.assert_close(cams, expected, rtol=1e-5, atol=1e-5)
    assert class_activation_maps(model, x, labels, size=7).shape == (3, 7, 7)
    assert class_activation_maps(model, x, labels, size=(5, 9)).shape == (3, 5, 9)
    if head == "patch":  # a separate patch classifier gives another map
        assert not torch.allclose(cams, class_activation_maps(model, x, labels, head="image"))


def test_cam_shared_classifier_patch_is_image():
    model = create_model("small_cnn", 3, grid_size=2, in_channels=1, separate_patch_classifier=False).eval()
    x = torch.rand(2, 1, 16, 16)
    y = torch.tensor([1, 2])
    assert torch.equal(class_activation_maps(model, x, y, head="patch"), class_activation_maps(model, x, y))


def test_cam_through_build_models_normalisation():
    from patchmix.training.model import NormalizedModel  # what training.build_model returns

    inner = create_model("small_cnn", 4, grid_size=2, in_channels=1).eval()
    wrapped = NormalizedModel(inner, (0.3,), (0.2,)).eval()
    x = torch.rand(2, 1, 16, 16)
    y = torch.tensor([3, 1])
    torch.testing.assert_close(class_activation_maps(wrapped, x, y),
                               class_activation_maps(inner, (x - 0.3) / 0.2, y))


def test_cam_from_timm():
    timm = pytest.importorskip("timm")
    model = from_timm(timm.create_model("resnet18", pretrained=False, num_classes=3), grid_size=2).eval()
    x = torch.rand(2, 3, 64, 64)
    y = torch.tensor([0, 2])
    cams = class_activation_maps(model, x, y)
    with torch.no_grad():
        expected = cam_by_hand(model.features(x), model.head.fc.weight, y, (64, 64))
    assert cams.shape == (2, 64, 64)
    torch.testing.assert_close(cams, expected, rtol=1e-5, atol=1e-5)


def test_constant_and_nan_maps_become_zeros():
    maps = torch.stack([torch.full((4, 5), 3.0), torch.rand(4, 5), torch.rand(4, 5)])
    maps[2, 1, 1] = float("nan")
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(4, 5)) and torch.equal(out[2], torch.zeros(4, 5))
    assert out[1].min() == 0 and out[1].max() == 1
    model = create_model("small_cnn", 2, grid_size=2, in_channels=1).eval()
    with torch.no_grad():
        model.head.fc.weight.zero_()  # every CAM is the constant 0
    assert torch.equal(class_activation_maps(model, torch.rand(2, 1, 16, 16), torch.tensor([0, 1])),
                       torch.zeros(2, 16, 16))


@needs_cv2
def test_cam_bicubic_against_opencv():
    """torch's bicubic (a = -0.75, half-pixel centres, border pixels replicated) against cv2.resize(INTER_CUBIC),
    what wsolevaluation uses: the same interpolation, so the normalised maps differ by float32 rounding only
    (measured: at most 1.3e-6 for 8 x 8 -> 224 x 224; after the uint8 quantisation 0.005% of the pixels sit one
    level apart; see docs/localization.md)."""
    torch.manual_seed(1)
    model = create_model("resnet32", 3, grid_size=2).eval()
    x = torch.rand(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    ours = class_activation_maps(model, x, y, size=(224, 224))
    theirs = class_activation_maps(model, x, y, size=(224, 224), resize="opencv")
    diff = (ours - theirs).abs().max().item()
    assert diff < 1e-5, diff


def test_cam_errors():
    model = create_model("small_cnn", 3, grid_size=2, in_channels=1).eval()
    x = torch.rand(2, 1, 16, 16)
    with pytest.raises(ValueError, match="head"):
        class_activation_maps(model, x, torch.tensor([0, 1]), head="box")
    with pytest.raises(ValueError, match="labels"):
        class_activation_maps(model, x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="labels"):
        class_activation_maps(model, x, torch.tensor([0]))
    with pytest.raises(ValueError, match="PatchModel"):
        class_activation_maps(torch.nn.Conv2d(1, 1, 1), x, torch.tensor([0, 1]))


def test_centre_gaussian():
    g = centre_gaussian(3, (9, 11))
    assert g.shape == (3, 9, 11) and g.dtype == torch.float32
    assert g[0, 4, 5] == 1.0 and g.min() == 0.0
    assert torch.equal(g[0], g[0].flip(0)) and torch.equal(g[0], g[0].flip(1))
    # a centred box is found at some threshold
    r = max_box_acc(centre_gaussian(1, 32), [np.array([[8, 8, 22, 22]])])
    assert r.per_iou[70] == 100.0
