"""patchmix::box_iou_sweep: the C++ kernel against the scipy reference and against OpenCV (wsolevaluation's
``findContours(RETR_TREE)`` + ``boundingRect`` per threshold, written here), on random maps; edge cases, opcheck,
``torch.compile(fullgraph=True)`` and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from patchmix.ops import backends, box_iou_sweep, box_iou_sweep_reference
from patchmix.ops._registry import build_info
from patchmix.ops.box_iou_sweep import contour_boxes

try:
    import cv2
except ImportError:  # the OpenCV comparisons skip; everything else runs without it
    cv2 = None
needs_cv2 = pytest.mark.skipif(cv2 is None, reason="opencv-python-headless is not installed")

pytestmark = pytest.mark.usefixtures("one_thread")


def opencv_boxes(binary: np.ndarray) -> list[tuple]:
    """Every contour's box as wsolevaluation takes it from OpenCV: (x, y, min(x + w, W - 1), min(y + h, H - 1))."""
    H, W = binary.shape
    contours = cv2.findContours(binary.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    out = []
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        out.append((x, y, min(x + w, W - 1), min(y + h, H - 1)))
    return out or [(0, 0, 0, 0)]


def opencv_sweep(q: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """The per-threshold OpenCV loop (one map): best IoU over contour boxes and GT boxes at each threshold."""
    out = np.empty(len(thresholds))
    for t, tau in enumerate(thresholds):
        level = int(tau * np.max(q))
        est = np.asarray(opencv_boxes(q > level), dtype=np.int64)
        best = 0.0
        for a in est:
            for b in gt:
                iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
                ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
                inter = iw * ih
                denom = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
                best = max(best, 0.0 if denom <= 0 else inter / denom)
        out[t] = best
    return out


def random_maps(rng, n, H, W, kind):
    """uint8 maps: "smooth" (blurred noise, several blobs), "noise" (uniform), "rings" (concentric rings with
    holes and islands), "sparse" (few levels, large flat regions)."""
    maps = []
    for _ in range(n):
        if kind == "smooth":
            m = ndimage.gaussian_filter(rng.random((H, W)), rng.uniform(0.7, 3.0))
        elif kind == "noise":
            m = rng.random((H, W))
        elif kind == "rings":
            yy, xx = np.mgrid[:H, :W]
            cy, cx = rng.uniform(0, H), rng.uniform(0, W)
            r = np.hypot(yy - cy, xx - cx)
            m = 0.5 + 0.5 * np.sin(r * rng.uniform(0.5, 1.5)) * np.exp(-r / max(H, W))
        else:
            m = rng.integers(0, 4, (H, W)) / 3.0
        m = (m - m.min()) / max(m.max() - m.min(), 1e-12)
        maps.append((m * 255).astype(np.uint8))
    return np.stack(maps)


def random_boxes(rng, n, H, W, max_boxes=2):
    boxes, offsets = [], [0]
    for _ in range(n):
        k = int(rng.integers(1, max_boxes + 1))
        for _ in range(k):
            x0, x1 = sorted(rng.integers(0, W, 2).tolist())
            y0, y1 = sorted(rng.integers(0, H, 2).tolist())
            boxes.append((x0, y0, x1, y1))
        offsets.append(len(boxes))
    return torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4), torch.tensor(offsets, dtype=torch.int64)


def as_args(maps, boxes, offsets, thresholds):
    return torch.from_numpy(maps), boxes, offsets, torch.as_tensor(thresholds, dtype=torch.float64)


def test_cpu_kernel_is_compiled():
    if not build_info()["extension"]:
        pytest.skip("patchmix._C is not built: the reference serves the CPU")
    assert backends()["ops"]["box_iou_sweep"]["cpu"].startswith("C++")
    assert "host copy" in backends()["ops"]["box_iou_sweep"]["cuda"]


@needs_cv2
@pytest.mark.parametrize("kind", ["smooth", "noise", "rings", "sparse"])
def test_contour_boxes_are_opencv_contours(kind):
    """The characterisation the kernel builds on: OpenCV's RETR_TREE contours are the 8-connected foreground
    components and the 4-connected holes (background off the border), boxes grown by one for holes."""
    rng = np.random.default_rng(1)
    for maps in (random_maps(rng, 20, int(rng.integers(1, 25)), int(rng.integers(1, 25)), kind) for _ in range(8)):
        for m in maps:
            for level in np.unique(m).tolist():
                fg = m > level
                assert sorted(map(tuple, contour_boxes(fg).tolist())) == sorted(opencv_boxes(fg))


@needs_cv2
@pytest.mark.parametrize("kind", ["smooth", "noise", "rings", "sparse"])
@pytest.mark.parametrize("interval", [0.01, 0.001])
def test_kernel_reference_and_opencv_agree(kind, interval):
    rng = np.random.default_rng({"smooth": 0, "noise": 1, "rings": 2, "sparse": 3}[kind])
    H, W = 23, 31
    maps = random_maps(rng, 6, H, W, kind)
    boxes, offsets = random_boxes(rng, 6, H, W)
    thresholds = np.arange(0, 1, interval)
    args = as_args(maps, boxes, offsets, thresholds)
    out = box_iou_sweep(*args)
    assert out.dtype == torch.float64 and out.shape == (6, len(thresholds))
    ref = box_iou_sweep_reference(*args)
    assert torch.equal(out, ref)
    for n in range(6):
        oracle = opencv_sweep(maps[n], boxes[offsets[n]:offsets[n + 1]].numpy(), thresholds)
        assert np.array_equal(out[n].numpy(), oracle)


@needs_cv2
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 3), st.integers(0, 2**32 - 1),
       st.sampled_from([1, 2, 3, 255]))
def test_random_small_maps_against_opencv(H, W, n, seed, top):
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, top + 1, (n, H, W)).astype(np.uint8)
    boxes, offsets = random_boxes(rng, n, H, W, max_boxes=3)
    thresholds = np.concatenate([np.arange(0, 1, 0.01), [0.999, 1.0]])
    out = box_iou_sweep(*as_args(maps, boxes, offsets, thresholds))
    assert torch.equal(out, box_iou_sweep_reference(*as_args(maps, boxes, offsets, thresholds)))
    for i in range(n):
        assert np.array_equal(out[i].numpy(), opencv_sweep(maps[i], boxes[offsets[i]:offsets[i + 1]].numpy(),
                                                            thresholds))


def test_edge_cases():
    th = torch.tensor([0.0, 0.3, 0.5, 0.999, 1.0], dtype=torch.float64)
    # N = 0
    out = box_iou_sweep(torch.zeros(0, 4, 5, dtype=torch.uint8), torch.zeros(0, 4, dtype=torch.int64),
                        torch.zeros(1, dtype=torch.int64), th)
    assert out.shape == (0, 5) and out.dtype == torch.float64
    # T = 0
    one = torch.tensor([[0, 0, 0, 0]])
    assert box_iou_sweep(torch.ones(1, 3, 3, dtype=torch.uint8), one, torch.tensor([0, 1]),
                         th[:0]).shape == (1, 0)
    # 1x1 maps: value 0 gives no foreground ([0, 0, 0, 0], IoU 1 with a GT box at the origin); value 255 and
    # value 1 are foreground below their max (a 1x1 component: box [0, 0, min(1, 0), min(1, 0)] = [0, 0, 0, 0])
    for v in (0, 1, 255):
        out = box_iou_sweep(torch.full((1, 1, 1), v, dtype=torch.uint8), one, torch.tensor([0, 1]), th)
        assert out.tolist() == [[1.0] * 5]
    # an all-zero map: no foreground at any threshold, the box [0, 0, 0, 0]
    gt = torch.tensor([[0, 0, 1, 1]])  # 4 pixels, the empty box covers one: IoU 1/4
    out = box_iou_sweep(torch.zeros(1, 6, 7, dtype=torch.uint8), gt, torch.tensor([0, 1]), th)
    assert out.tolist() == [[0.25] * 5]
    # max = 1: every threshold < 1 gives level int(tau * 1) = 0 (foreground: the pixels at 1); tau = 1: nothing
    m = torch.zeros(1, 6, 7, dtype=torch.uint8)
    m[0, 2:4, 3:6] = 1  # x 3..5, y 2..3 -> box [3, 2, 6, 4]
    out = box_iou_sweep(m, torch.tensor([[3, 2, 6, 4]]), torch.tensor([0, 1]), th)
    assert out.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]
    # max = 255 with a plateau: level int(0.999 * 255) = 254 keeps the 255 pixels
    m = torch.zeros(1, 6, 7, dtype=torch.uint8)
    m[0, 1:3, 1:3] = 255  # box [1, 1, 3, 3] (grown right and down by one, within the image)
    out = box_iou_sweep(m, torch.tensor([[1, 1, 3, 3]]), torch.tensor([0, 1]), th)
    assert out.tolist() == [[1.0, 1.0, 1.0, 1.0, 0.0]]


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(5)
    maps = random_maps(rng, 9, 40, 37, "noise")
    boxes, offsets = random_boxes(rng, 9, 40, 37)
    args = as_args(maps, boxes, offsets, np.arange(0, 1, 0.001))
    one = box_iou_sweep(*args)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = box_iou_sweep(*args)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, two)


def test_noncontiguous_inputs():
    rng = np.random.default_rng(6)
    maps = torch.from_numpy(random_maps(rng, 4, 11, 13, "smooth"))
    boxes, offsets = random_boxes(rng, 4, 11, 13)
    th = torch.arange(0, 1, 0.01, dtype=torch.float64)
    ref = box_iou_sweep(maps, boxes, offsets, th)
    mt = maps.transpose(1, 2).contiguous().transpose(1, 2)
    bt = boxes.t().contiguous().t()
    assert torch.equal(box_iou_sweep(mt, bt, offsets, th[::1]), ref)
    assert torch.equal(box_iou_sweep(maps, boxes, offsets, torch.arange(0, 1, 0.005, dtype=torch.float64)[::2]),
                       box_iou_sweep(maps, boxes, offsets, torch.arange(0, 1, 0.005, dtype=torch.float64)[::2].clone()))


def _small_args(seed=0):
    rng = np.random.default_rng(seed)
    maps = random_maps(rng, 3, 9, 10, "smooth")
    boxes, offsets = random_boxes(rng, 3, 9, 10)
    return as_args(maps, boxes, offsets, np.arange(0, 1, 0.1))


def test_opcheck():
    torch.library.opcheck(torch.ops.patchmix.box_iou_sweep.default, _small_args())


def test_torch_compile_fullgraph():
    args = _small_args(1)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(maps, boxes, offsets, th):
        return box_iou_sweep(maps, boxes, offsets, th) * 100

    assert torch.equal(f(*args), box_iou_sweep(*args) * 100)


def test_meta_shapes():
    maps, boxes, offsets, th = (a.to("meta") for a in _small_args())
    out = torch.ops.patchmix.box_iou_sweep(maps, boxes, offsets, th)
    assert out.shape == (3, 10) and out.dtype == torch.float64


@pytest.mark.parametrize("impl", ["wrapper", "op", "reference"])
def test_bad_input_names_the_argument(impl):
    fn = {"wrapper": box_iou_sweep, "op": torch.ops.patchmix.box_iou_sweep, "reference": box_iou_sweep_reference}[impl]
    maps = torch.zeros(2, 5, 5, dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2]])
    off = torch.tensor([0, 1, 2])
    th = torch.tensor([0.0, 0.5], dtype=torch.float64)
    cases = [
        ((maps.float(), boxes, off, th), "scoremaps"),
        ((maps[0], boxes, off, th), "scoremaps"),
        ((torch.zeros(2, 0, 5, dtype=torch.uint8), boxes, off, th), "scoremaps"),
        ((maps, boxes.int(), off, th), "boxes"),
        ((maps, boxes[:, :3], off, th), "boxes"),
        ((maps, boxes, off[:2], th), "box_offsets"),
        ((maps, boxes, off.int(), th), "box_offsets"),
        ((maps, boxes, off, th.float()), "thresholds"),
        ((maps, boxes, torch.tensor([1, 1, 2]), th), "box_offsets must start at 0"),
        ((maps, boxes, torch.tensor([0, 1, 3]), th), "end at M = 2"),
        ((maps, boxes, torch.tensor([0, 2, 2]), th), "map 1 has no box"),
        ((maps, torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2], [0, 0, 0, 0]]), torch.tensor([0, 3, 3]), th),
         "map 1 has no box"),
        ((torch.zeros(3, 5, 5, dtype=torch.uint8), torch.tensor([[0, 0, 1, 1], [1, 1, 2, 2], [0, 0, 0, 0]]),
          torch.tensor([0, 2, 1, 3]), th), "non-decreasing"),
        ((maps, torch.tensor([[0, -1, 1, 1], [1, 1, 2, 2]]), off, th), "boxes[0]"),
        ((maps, torch.tensor([[0, 0, 1, 1], [2, 1, 1, 2]]), off, th), "boxes[1]"),
        ((maps, torch.tensor([[0, 0, 1, 2**40], [1, 1, 2, 2]]), off, th), "boxes[0]"),
        ((maps, boxes, off, torch.tensor([0.0, 1.5], dtype=torch.float64)), "thresholds[1]"),
        ((maps, boxes, off, torch.tensor([float("nan")], dtype=torch.float64)), "thresholds[0]"),
    ]
    for args, msg in cases:
        with pytest.raises((ValueError, TypeError, RuntimeError), match=msg.replace("[", r"\[").replace("]", r"\]")):
            fn(*args)
    if impl != "op":
        with pytest.raises(TypeError, match="boxes"):
            fn(maps, [[0, 0, 1, 1]], off, th)
