// patchmix::box_iou_sweep, CPU kernel: the best box IoU of every score map at every CAM threshold.
//
// wsolevaluation's MaxBoxAccV2 thresholds each uint8 map at every tau (foreground: value > int(tau * max)),
// takes the bounding box of every contour OpenCV's findContours(RETR_TREE) returns, and keeps the best IoU
// against the image's GT boxes. Those contours are (checked against OpenCV on random maps in
// tests/test_box_iou_sweep.py): the outer border of every 8-connected foreground component, whose bounding box
// is the component's, and the border of every hole (a 4-connected background component that does not touch
// the image border, OpenCV padding the image with zeros), whose bounding box is the hole's grown by one pixel.
//
// Instead of one labelling per threshold, one pass per map over its pixels in value order (a counting sort of
// the 256 levels): union-find over the foreground, adding pixels in decreasing value (8-connected), gives the
// foreground components of every level L = v - 1 once the pixels of value v are in; the same over the
// background in increasing value (4-connected, each root carrying a "touches the border" flag) gives the holes
// of every level L = v. At each level a threshold asks for, the best IoU over the live roots; a root's IoU is
// cached until a union changes its box, so a level costs a pass over the live roots. Results do not depend on
// the thread count (one map per task, no shared sums).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace patchmix {

namespace {

constexpr int kLevels = 256;
constexpr int64_t kMaxCoordinate = int64_t{1} << 30;  // box areas and their sums stay far from int64 overflow

// wsolevaluation's IoU of inclusive-pixel boxes, best over the GT boxes gt[0..k): intersection over
// area_a + area_b - intersection, 0 where that denominator is not positive.
inline double best_iou(int64_t x0, int64_t y0, int64_t x1, int64_t y1, const int64_t* gt, int64_t k) {
  const int64_t area_a = (x1 - x0 + 1) * (y1 - y0 + 1);
  double best = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t* b = gt + 4 * j;
    const int64_t iw = std::max<int64_t>(0, std::min(x1, b[2]) - std::max(x0, b[0]) + 1);
    const int64_t ih = std::max<int64_t>(0, std::min(y1, b[3]) - std::max(y0, b[1]) + 1);
    const int64_t inter = iw * ih;
    const int64_t denom = area_a + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter;
    const double iou = denom <= 0 ? 0.0 : static_cast<double>(inter) / static_cast<double>(denom);
    best = std::max(best, iou);
  }
  return best;
}

// Union-find over the pixels of one map with a bounding box (and a border flag) per root. The parent links
// sit in their own array (4 bytes a pixel: 200 KB at 224 x 224, cache-resident), since every added pixel reads
// its neighbours' links and follows them to a root; a root's box is read and written only when two
// components merge.
struct Box {
  int32_t size;
  int32_t x0, y0, x1, y1;
  uint8_t border, dirty;
};

struct Forest {
  std::vector<int32_t> parent;  // -1: pixel not added yet
  std::vector<Box> box;
  std::vector<double> iou;  // cached best IoU of a root's box, valid while !dirty
  std::vector<int32_t> live;  // every root made since the last compaction, and the surviving roots before it

  void reset(int64_t n) {
    parent.assign(n, -1);
    box.resize(n);
    iou.resize(n);
    live.clear();
  }

  bool added(int32_t p) const { return parent[p] >= 0; }

  int32_t find(int32_t p) {
    while (parent[p] != p) {
      const int32_t up = parent[parent[p]];  // path halving
      parent[p] = up;
      p = up;
    }
    return p;
  }

  // A new root for pixel p; returns p.
  int32_t add(int32_t p, int32_t x, int32_t y, bool on_border) {
    parent[p] = p;
    box[p] = Box{1, x, y, x, y, static_cast<uint8_t>(on_border), 1};
    live.push_back(p);
    return p;
  }

  // Adds pixel p to the component of its added neighbour q; returns that component's root. Pixel p gets no
  // box of its own (a write to a random place per pixel otherwise; only roots' boxes are read).
  int32_t attach(int32_t p, int32_t q, int32_t x, int32_t y, bool on_border) {
    const int32_t r = find(q);
    parent[p] = r;
    Box& A = box[r];
    A.size += 1;
    A.x0 = std::min(A.x0, x);
    A.y0 = std::min(A.y0, y);
    A.x1 = std::max(A.x1, x);
    A.y1 = std::max(A.y1, y);
    A.border |= static_cast<uint8_t>(on_border);
    A.dirty = 1;
    return r;
  }

  // Joins the component of q to root r (r is a root); returns the joint root.
  int32_t join(int32_t r, int32_t q) {
    if (parent[q] == r) return r;  // the common case once a region has grown: q hangs right under r
    int32_t a = r, b = find(q);
    if (a == b) return a;
    if (box[a].size < box[b].size) std::swap(a, b);
    Box& A = box[a];
    const Box& B = box[b];
    parent[b] = a;
    A.size += B.size;
    A.x0 = std::min(A.x0, B.x0);
    A.y0 = std::min(A.y0, B.y0);
    A.x1 = std::max(A.x1, B.x1);
    A.y1 = std::max(A.y1, B.y1);
    A.border |= B.border;
    A.dirty = 1;
    return a;
  }

  // Best IoU over the live roots (holes only: roots off the border, box grown by `grow`), or 0 without one.
  // A component box [x0, x1] becomes OpenCV's boundingRect box (x, y, x + w, y + h) clipped to the image:
  // [x0 - grow, min(x1 + grow + 1, W - 1)] (rows alike).
  double best(const int64_t* gt, int64_t k, int32_t W, int32_t H, bool holes) {
    const int32_t grow = holes ? 1 : 0;
    double best_value = 0.0;
    size_t kept = 0;
    for (size_t i = 0; i < live.size(); ++i) {
      const int32_t r = live[i];
      if (parent[r] != r) continue;
      Box& v = box[r];
      live[kept++] = r;
      if (holes && v.border) continue;
      if (v.dirty) {
        iou[r] = best_iou(v.x0 - grow, v.y0 - grow, std::min(v.x1 + grow + 1, W - 1),
                          std::min(v.y1 + grow + 1, H - 1), gt, k);
        v.dirty = 0;
      }
      best_value = std::max(best_value, iou[r]);
    }
    live.resize(kept);
    return best_value;
  }
};

struct Workspace {
  Forest forest;
  std::vector<int32_t> order;  // pixel indices sorted by value (counting sort)
  int64_t start[kLevels + 1];  // pixels of value v: order[start[v] .. start[v + 1])
};

// One map: s (H, W) uint8, GT boxes gt (k, 4), thresholds thr (T,) -> out (T,).
void sweep_map(const uint8_t* s, int32_t H, int32_t W, const int64_t* gt, int64_t k, const double* thr,
               int64_t T, double* out, Workspace& ws) {
  const int64_t n = int64_t{H} * W;
  int32_t count[kLevels] = {0};
  for (int64_t p = 0; p < n; ++p) ++count[s[p]];
  int32_t top = kLevels - 1;
  while (top > 0 && count[top] == 0) --top;  // the map's max
  ws.start[0] = 0;
  for (int v = 0; v < kLevels; ++v) ws.start[v + 1] = ws.start[v] + count[v];
  ws.order.resize(n);
  {
    int64_t next[kLevels];
    std::copy(ws.start, ws.start + kLevels, next);
    for (int64_t p = 0; p < n; ++p) ws.order[next[s[p]]++] = static_cast<int32_t>(p);
  }

  // The integer levels the thresholds ask for: thr = (int64)(tau * max), as int(tau * np.max(map)).
  bool need[kLevels] = {false};
  bool any_below_top = false;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t level = static_cast<int64_t>(thr[t] * static_cast<double>(top));
    if (level < top) {
      need[level] = true;
      any_below_top = true;
    }
  }
  double fg_best[kLevels] = {0.0}, hole_best[kLevels] = {0.0};
  Forest& f = ws.forest;
  if (any_below_top) {
    // Foreground (value > L), 8-connected: add value v, then level L = v - 1 is complete.
    f.reset(n);
    double last = 0.0;
    bool changed = true;
    for (int32_t v = top; v >= 1; --v) {
      for (int64_t i = ws.start[v]; i < ws.start[v + 1]; ++i) {
        const int32_t p = ws.order[i];
        const int32_t y = p / W, x = p % W;
        int32_t r = -1;
        const int32_t ylo = std::max(y - 1, 0), yhi = std::min(y + 1, H - 1);
        const int32_t xlo = std::max(x - 1, 0), xhi = std::min(x + 1, W - 1);
        for (int32_t yy = ylo; yy <= yhi; ++yy) {
          for (int32_t xx = xlo; xx <= xhi; ++xx) {
            const int32_t q = yy * W + xx;
            if (q == p || !f.added(q)) continue;
            r = r < 0 ? f.attach(p, q, x, y, false) : f.join(r, q);
          }
        }
        if (r < 0) f.add(p, x, y, false);
        changed = true;
      }
      if (need[v - 1]) {
        if (changed) last = f.best(gt, k, W, H, false);
        changed = false;
        fg_best[v - 1] = last;
      }
    }
    // Background (value <= L), 4-connected: add value v, then level L = v is complete; holes are the roots
    // that never touched the border.
    f.reset(n);
    changed = true;
    for (int32_t v = 0; v < top; ++v) {
      for (int64_t i = ws.start[v]; i < ws.start[v + 1]; ++i) {
        const int32_t p = ws.order[i];
        const int32_t y = p / W, x = p % W;
        const bool on_border = x == 0 || y == 0 || x == W - 1 || y == H - 1;
        int32_t r = -1;
        for (const int32_t q : {x > 0 ? p - 1 : -1, x + 1 < W ? p + 1 : -1, y > 0 ? p - W : -1,
                                y + 1 < H ? p + W : -1}) {
          if (q < 0 || !f.added(q)) continue;
          r = r < 0 ? f.attach(p, q, x, y, on_border) : f.join(r, q);
        }
        if (r < 0) f.add(p, x, y, on_border);
        changed = true;
      }
      if (need[v]) {
        if (changed) last = f.best(gt, k, W, H, true);
        changed = false;
        hole_best[v] = last;
      }
    }
  }
  // No foreground (level >= max): wsolevaluation's box [0, 0, 0, 0].
  const double empty = best_iou(0, 0, 0, 0, gt, k);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t level = static_cast<int64_t>(thr[t] * static_cast<double>(top));
    out[t] = level >= top ? empty : std::max(fg_best[level], hole_best[level]);
  }
}

}  // namespace

at::Tensor box_iou_sweep_cpu(const at::Tensor& scoremaps, const at::Tensor& boxes, const at::Tensor& box_offsets,
                             const at::Tensor& thresholds) {
  TORCH_CHECK_VALUE(scoremaps.scalar_type() == at::kByte && scoremaps.dim() == 3,
                    "box_iou_sweep: scoremaps must be a uint8 tensor of shape (N, H, W), got ",
                    scoremaps.scalar_type(), " ", scoremaps.sizes());
  const int64_t N = scoremaps.size(0), H = scoremaps.size(1), W = scoremaps.size(2);
  TORCH_CHECK_VALUE(H >= 1 && W >= 1 && H * W <= std::numeric_limits<int32_t>::max(),
                    "box_iou_sweep: scoremaps must have 1 <= H, W and H * W < 2^31, got ", scoremaps.sizes());
  TORCH_CHECK_VALUE(boxes.scalar_type() == at::kLong && boxes.dim() == 2 && boxes.size(1) == 4,
                    "box_iou_sweep: boxes must be an int64 tensor of shape (M, 4), got ", boxes.scalar_type(), " ",
                    boxes.sizes());
  TORCH_CHECK_VALUE(box_offsets.scalar_type() == at::kLong && box_offsets.dim() == 1 && box_offsets.size(0) == N + 1,
                    "box_iou_sweep: box_offsets must be an int64 tensor of shape (N + 1,) = (", N + 1, ",), got ",
                    box_offsets.scalar_type(), " ", box_offsets.sizes());
  TORCH_CHECK_VALUE(thresholds.scalar_type() == at::kDouble && thresholds.dim() == 1,
                    "box_iou_sweep: thresholds must be a float64 tensor of shape (T,), got ",
                    thresholds.scalar_type(), " ", thresholds.sizes());
  for (const at::Tensor* t : {&scoremaps, &boxes, &box_offsets, &thresholds}) {
    TORCH_CHECK_VALUE(t->device().is_cpu(), "box_iou_sweep: the CPU kernel got a tensor on ", t->device());
  }
  const at::Tensor sc = scoremaps.contiguous();
  const at::Tensor bc = boxes.contiguous();
  const at::Tensor oc = box_offsets.contiguous();
  const at::Tensor tc = thresholds.contiguous();
  const int64_t M = bc.size(0), T = tc.size(0);
  const int64_t* off = oc.data_ptr<int64_t>();
  const int64_t* bx = bc.data_ptr<int64_t>();
  const double* thr = tc.data_ptr<double>();
  // Offsets and boxes are checked before any box is read through them.
  TORCH_CHECK_VALUE(off[0] == 0 && off[N] == M, "box_iou_sweep: box_offsets must start at 0 and end at M = ", M,
                    " (the number of boxes), got ", off[0], " and ", off[N]);
  for (int64_t i = 0; i < N; ++i) {
    TORCH_CHECK_VALUE(off[i + 1] >= off[i], "box_iou_sweep: box_offsets must be non-decreasing, got ", off[i],
                      " then ", off[i + 1], " at ", i);
    TORCH_CHECK_VALUE(off[i + 1] > off[i], "box_iou_sweep: map ", i, " has no box (box_offsets[", i,
                      "] == box_offsets[", i + 1, "]); every map needs at least one GT box");
  }
  for (int64_t j = 0; j < M; ++j) {
    const int64_t* b = bx + 4 * j;
    TORCH_CHECK_VALUE(b[0] >= 0 && b[1] >= 0 && b[2] < kMaxCoordinate && b[3] < kMaxCoordinate,
                      "box_iou_sweep: boxes[", j, "] = (", b[0], ", ", b[1], ", ", b[2], ", ", b[3],
                      ") has a coordinate outside [0, 2^30)");
    TORCH_CHECK_VALUE(b[0] <= b[2] && b[1] <= b[3], "box_iou_sweep: boxes[", j, "] = (", b[0], ", ", b[1], ", ",
                      b[2], ", ", b[3], ") is not (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1");
  }
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK_VALUE(thr[t] >= 0.0 && thr[t] <= 1.0, "box_iou_sweep: thresholds[", t, "] = ", thr[t],
                      " is outside [0, 1]");
  }
  at::Tensor out = at::empty({N, T}, tc.options());
  if (N == 0 || T == 0) return out;
  const uint8_t* s = sc.data_ptr<uint8_t>();
  double* o = out.data_ptr<double>();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    Workspace ws;
    for (int64_t i = begin; i < end; ++i) {
      sweep_map(s + i * H * W, static_cast<int32_t>(H), static_cast<int32_t>(W), bx + 4 * off[i], off[i + 1] - off[i],
                thr, T, o + i * T, ws);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(patchmix, m) {
  m.def("box_iou_sweep(Tensor scoremaps, Tensor boxes, Tensor box_offsets, Tensor thresholds) -> Tensor");
}

TORCH_LIBRARY_IMPL(patchmix, CPU, m) { m.impl("box_iou_sweep", &box_iou_sweep_cpu); }

}  // namespace patchmix
