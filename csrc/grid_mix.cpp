// patchmix::grid_mix, grid_mix_out and grid_mix_backward, CPU kernels.
//
// Every output row segment that lies in one grid cell comes from exactly one source image, so the forward
// is a sequence of copies over runs of consecutive cells that share a source (dtype-agnostic: it copies
// bytes, which is why uint8 costs nothing extra). Floor: read N*C*H*W elements once, write them once, the
// bytes of a copy into a preallocated buffer (grid_mix_out); grid_mix allocates its output, which on Linux
// also pays the first touch of fresh pages.
//
// The backward gathers instead of scattering: row r of grad_x[b] sums, in a fixed order, the taken runs of
// the rows r of every grad[n] that took pixels from x[b] (index_a[n] == b for True cells, index_b[n] == b for
// False cells), so it is deterministic and parallel over grad_x's rows without atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <cstdint>
#include <cstring>
#include <optional>
#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <tuple>
#include <vector>

namespace patchmix {

namespace {

// starts[r] = first pixel of cell r = ceil(r * size / P); pixel i is in cell floor(i * P / size).
std::vector<int64_t> cell_starts(int64_t size, int64_t P) {
  std::vector<int64_t> starts(P + 1);
  for (int64_t r = 0; r <= P; ++r) starts[r] = (r * size + P - 1) / P;
  return starts;
}

// Ask Linux to back a large fresh output with transparent huge pages before its first touch. Writing a
// new 154 MB output (256x3x224x224 float32) otherwise costs ~37,000 page faults, which on the 2-core dev
// machine took longer than the copy itself. A hint only: ignored where THP is off.
void advise_huge_pages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  if (bytes < int64_t(4 * kHuge)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

template <int N>
PATCHMIX_INLINE void move(char* d, const char* s) {
  char tmp[N];
  std::memcpy(tmp, s, N);  // fixed-size memcpy: vector moves, inlined
  std::memcpy(d, tmp, N);
}

// n >= V bytes in V-byte moves, the last one overlapping: the trip count is the same for every cell of a call,
// so the branch is predictable (a 32x32 float32 batch with P = 4 has ~100,000 32-byte cells; a library
// memcpy per cell, or a length-dispatching copy, cost more than the bytes: 300 and 165 us against 105 us).
template <int V>
PATCHMIX_INLINE void copy_fixed(char* d, const char* s, int64_t n) {
  int64_t i = 0;
  for (; i + V < n; i += V) move<V>(d + i, s + i);
  move<V>(d + n - V, s + n - V);
}

// n bytes (a multiple of A, at an A-aligned d) with non-temporal stores: a large output is not read before it
// is written (no read-for-ownership) and does not evict the sources from the cache. At 256x3x224x224 uint8
// into a preallocated buffer, ordinary stores took 1.65x the time of a copy (which streams), these ~1.2x.
template <int A>
PATCHMIX_INLINE void copy_stream(char* d, const char* s, int64_t n) {
#if defined(__x86_64__)
  for (int64_t i = 0; i < n; i += A) {
    if constexpr (A == 16) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i)));
    } else {
      long long v;
      std::memcpy(&v, s + i, 8);
      _mm_stream_si64(reinterpret_cast<long long*>(d + i), v);
    }
  }
#else
  std::memcpy(d, s, n);
#endif
}

// Any length (runs of uneven cells).
inline void copy_run(char* d, const char* s, int64_t n) {
  if (n >= 256) {
    std::memcpy(d, s, n);
  } else if (n >= 32) {
    copy_fixed<32>(d, s, n);
  } else if (n >= 16) {
    copy_fixed<16>(d, s, n);
  } else if (n >= 8) {
    copy_fixed<8>(d, s, n);
  } else if (n >= 4) {
    copy_fixed<4>(d, s, n);
  } else {
    for (int64_t i = 0; i < n; ++i) d[i] = s[i];
  }
}

// Cells of one width (P divides W): each (sample, cell row) tile copies every row's P cells of `cell` bytes
// from their two source rows. Compiled per ISA (below): with 64-byte vectors the 32x32 float32 batch takes
// 105 us on one core instead of 135 us.
struct UniformTiles {
  const char* src;
  char* dst;
  const int64_t* pa;
  const int64_t* pb;
  const bool* m;
  const int64_t* row_start;  // P + 1 cell row starts
  int64_t P, planes, plane_bytes, image_bytes, row_bytes, cell;
  int stream;  // 0, or the non-temporal store width (8 or 16 bytes) every cell start is aligned to
};

// V: a copy_fixed width, or with STREAM the non-temporal store width.
template <int V, bool STREAM = false>
PATCHMIX_INLINE void uniform_tiles_impl(const UniformTiles& u, int64_t begin, int64_t end) {
  // locals, not u's fields: stores through char* may alias anything, so fields would be reloaded per cell
  const char* const src = u.src;
  char* const dst = u.dst;
  const int64_t P = u.P, planes = u.planes, plane_bytes = u.plane_bytes, image_bytes = u.image_bytes;
  const int64_t row_bytes = u.row_bytes, cell = u.cell;
  std::vector<const char*> srcs(P);
  for (int64_t nc = begin; nc < end; ++nc) {  // one plane (sample n, channel c): its rows top to bottom
    const int64_t n = nc / planes, off = (nc % planes) * plane_bytes;
    const char* a = src + u.pa[n] * image_bytes + off;
    const char* b = src + u.pb[n] * image_bytes + off;
    char* d = dst + n * image_bytes + off;
    for (int64_t r = 0; r < P; ++r) {
      const bool* m = u.m + (n * P + r) * P;
      for (int64_t q = 0; q < P; ++q) srcs[q] = (m[q] ? a : b) + q * cell;
      const char* const* sq = srcs.data();
      for (int64_t h = u.row_start[r]; h < u.row_start[r + 1]; ++h) {
        const int64_t ro = h * row_bytes;
        for (int64_t q = 0; q < P; ++q) {
          if constexpr (V == 1) {
            for (int64_t i = 0; i < cell; ++i) d[ro + q * cell + i] = sq[q][ro + i];
          } else if constexpr (STREAM) {
            copy_stream<V>(d + ro + q * cell, sq[q] + ro, cell);
          } else {
            copy_fixed<V>(d + ro + q * cell, sq[q] + ro, cell);
          }
        }
      }
    }
  }
}

#define PATCHMIX_GRID_TILES(SUFFIX, ATTR)                                                    \
  ATTR void uniform_tiles_##SUFFIX(const UniformTiles& u, int64_t begin, int64_t end) {    \
    if (u.stream == 16) return uniform_tiles_impl<16, true>(u, begin, end);                \
    if (u.stream == 8) return uniform_tiles_impl<8, true>(u, begin, end);                  \
    if (u.cell >= 32) return uniform_tiles_impl<32>(u, begin, end);                        \
    if (u.cell >= 16) return uniform_tiles_impl<16>(u, begin, end);                        \
    if (u.cell >= 8) return uniform_tiles_impl<8>(u, begin, end);                          \
    if (u.cell >= 4) return uniform_tiles_impl<4>(u, begin, end);                          \
    uniform_tiles_impl<1>(u, begin, end);                                                  \
  }

PATCHMIX_GRID_TILES(base, )
#ifdef PATCHMIX_X86_ISAS
PATCHMIX_GRID_TILES(v3, PATCHMIX_TARGET_V3)
PATCHMIX_GRID_TILES(v4, PATCHMIX_TARGET_V4)
#endif

void uniform_tiles(const UniformTiles& u, int64_t begin, int64_t end) {
  switch (cpu_isa()) {
#ifdef PATCHMIX_X86_ISAS
    case Isa::x86_64_v4: return uniform_tiles_v4(u, begin, end);
    case Isa::x86_64_v3: return uniform_tiles_v3(u, begin, end);
#endif
    default: return uniform_tiles_base(u, begin, end);
  }
}

void check_index(const char* name, const int64_t* idx, int64_t n, int64_t batch) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < batch, "grid_mix: ", name, "[", i, "] = ", idx[i],
                      " is out of range for x with batch size B = ", batch, " (expected 0 <= ", name,
                      " < ", batch, ")");
  }
}

// Shape, dtype and device checks of the common arguments (x: the images, or the backward's grad with B = batch);
// returns N.
int64_t check_args(const at::Tensor& x, const at::Tensor& mask, const std::optional<at::Tensor>& index_a,
                   const at::Tensor& index_b, bool floating_only, std::optional<int64_t> batch = std::nullopt) {
  TORCH_CHECK_VALUE(x.dim() == 4, "grid_mix: x must have shape (B, C, H, W), got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble ||
                        (dt == at::kByte && !floating_only),
                    "grid_mix: x has dtype ", dtype_name(dt), "; expected one of float32, float16, bfloat16, uint8 (or float64)");
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, "grid_mix: mask must be a bool tensor, got dtype ",
                    dtype_name(mask.scalar_type()));
  TORCH_CHECK_VALUE(mask.dim() == 3 && mask.size(1) == mask.size(2),
                    "grid_mix: mask must have shape (N, P, P), got ", mask.sizes());
  const int64_t B = batch.value_or(x.size(0)), H = x.size(2), W = x.size(3);
  const int64_t N = mask.size(0), P = mask.size(1);
  TORCH_CHECK_VALUE(P >= 1 && P <= std::min(H, W), "grid_mix: grid size P = ", P,
                    " must satisfy 1 <= P <= min(H, W) = ", std::min(H, W), " for x of shape ", x.sizes());
  auto check_index_meta = [&](const char* name, const at::Tensor& idx) {
    TORCH_CHECK_VALUE(idx.scalar_type() == at::kLong, "grid_mix: ", name, " must be int64, got dtype ",
                      dtype_name(idx.scalar_type()));
    TORCH_CHECK_VALUE(idx.dim() == 1 && idx.size(0) == N, "grid_mix: ", name, " must have shape (N,) = (", N,
                      ",) to match mask, got ", idx.sizes());
    TORCH_CHECK_VALUE(idx.device().is_cpu(), "grid_mix: the CPU kernel got ", name, " on ", idx.device());
  };
  if (index_a.has_value()) {
    check_index_meta("index_a", *index_a);
  } else {
    TORCH_CHECK_VALUE(N == B, "grid_mix: index_a is None (meaning arange(B)), so mask must hold B = ", B,
                      " masks, got N = ", N);
  }
  check_index_meta("index_b", index_b);
  TORCH_CHECK_VALUE(x.device().is_cpu() && mask.device().is_cpu(), "grid_mix: the CPU kernel got x on ",
                    x.device(), " and mask on ", mask.device());
  return N;
}

at::MemoryFormat output_format(const at::Tensor& x) {
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

// The row geometry shared by the forward and the backward. One "row" is W pixels (contiguous: of one
// channel, C*H rows per image; channels_last: of all C channels interleaved, H rows per image). Runs of
// consecutive cells with one source are precomputed per (sample, cell row) as byte ranges of a row, so the
// row loops do no mask scan and no integer division (at 256x3x32x32 the per-row divisions and scans took
// over half of the kernel's time).
struct Plan {
  struct Run {
    int64_t off, len;
    bool from_a;
  };
  int64_t P = 1, H = 1, rows_per_image = 1, row_bytes = 0, image_bytes = 0;
  std::vector<Run> runs;       // (N * P) * P, the first n_runs[nr] of each used
  std::vector<int64_t> n_runs;  // N * P
  std::vector<int64_t> cell_row;  // H: floor(h * P / H)

  Plan(const bool* m, int64_t N, int64_t P_, int64_t C, int64_t H_, int64_t W, int64_t es, bool channels_last)
      : P(P_), H(H_) {
    const auto cs = cell_starts(W, P);
    rows_per_image = channels_last ? H : C * H;
    const int64_t px = channels_last ? C * es : es;
    row_bytes = W * px;
    image_bytes = C * H * W * es;
    runs.resize(N * P * P);
    n_runs.resize(N * P);
    for (int64_t nr = 0; nr < N * P; ++nr) {
      const bool* mrow = m + nr * P;
      int64_t k = 0;
      for (int64_t q = 0; q < P;) {
        int64_t q_end = q + 1;
        while (q_end < P && mrow[q_end] == mrow[q]) ++q_end;
        runs[nr * P + k++] = Run{cs[q] * px, (cs[q_end] - cs[q]) * px, mrow[q]};
        q = q_end;
      }
      n_runs[nr] = k;
    }
    cell_row.resize(H);
    for (int64_t h = 0; h < H; ++h) cell_row[h] = h * P / H;
  }
};

// ~32 KiB of output per task keeps the OpenMP overhead below 1% at 224x224.
int64_t row_grain(int64_t row_bytes) { return std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(row_bytes, 1)); }

// The forward into preallocated out (x's memory format) and lam (float32, N). Data checks done by the caller.
void compose(const at::Tensor& xc, const at::Tensor& mc, const int64_t* pa, const int64_t* pb, at::Tensor& out,
             at::Tensor& lam, bool channels_last) {
  const int64_t C = xc.size(1), H = xc.size(2), W = xc.size(3);
  const int64_t N = mc.size(0), P = mc.size(1);
  if (N == 0) return;
  const bool* m = mc.data_ptr<bool>();
  // Mixing weight: sum of the True cells' pixel areas, exact for uneven cells.
  const auto rs = cell_starts(H, P), cs = cell_starts(W, P);
  float* plam = lam.data_ptr<float>();
  for (int64_t n = 0; n < N; ++n) {
    int64_t count = 0;
    for (int64_t r = 0; r < P; ++r)
      for (int64_t q = 0; q < P; ++q)
        count += m[(n * P + r) * P + q] * (rs[r + 1] - rs[r]) * (cs[q + 1] - cs[q]);  // no branch: masks are random
    plam[n] = static_cast<float>(static_cast<double>(count) / static_cast<double>(H * W));
  }
  const auto* src = static_cast<const char*>(xc.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  const int64_t es = xc.element_size(), px = channels_last ? C * es : es;
  const int64_t row_bytes = W * px, image_bytes = C * H * W * es;
  // One task per plane (sample n, channel c; the whole image for channels_last), read and written top to
  // bottom: two source streams and one output stream, which the prefetchers follow (cell row by cell row
  // across the channels, six interleaved streams, was ~10% slower at 256x3x32x32). The rows of a cell row
  // share one choice of sources, made once, and the copy lengths repeat row after row (predictable branches).
  const int64_t planes = channels_last ? 1 : C, plane_bytes = H * row_bytes;
  const int64_t grain = std::max<int64_t>(1, (64 * 1024) / std::max<int64_t>(plane_bytes, 1));
  if (W % P == 0) {
    const int64_t cell = W / P * px;
    // Stream outputs larger than a cache (8 MiB); 16-byte stores where every cell start is 16-aligned, else 8.
    int stream = 0;
#if defined(__x86_64__)
    const auto aligned = [&](int64_t a) {
      return cell % a == 0 && row_bytes % a == 0 && reinterpret_cast<uintptr_t>(dst) % a == 0;
    };
    if (N * image_bytes >= (int64_t{8} << 20) && aligned(16)) stream = 16;
#endif
    const UniformTiles u{src, dst, pa, pb, m, rs.data(), P, planes, plane_bytes, image_bytes, row_bytes, cell, stream};
    at::parallel_for(0, N * planes, grain, [&](int64_t begin, int64_t end) {
      uniform_tiles(u, begin, end);
#if defined(__x86_64__)
      if (stream) _mm_sfence();  // the streamed stores are visible before this task ends
#endif
    });
    return;
  }
  const Plan plan(m, N, P, C, H, W, es, channels_last);
  at::parallel_for(0, N * planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t nc = begin; nc < end; ++nc) {
      const int64_t n = nc / planes, off = (nc % planes) * plane_bytes;
      const char* base_a = src + pa[n] * image_bytes + off;
      const char* base_b = src + pb[n] * image_bytes + off;
      char* base_d = dst + n * image_bytes + off;
      for (int64_t r = 0; r < P; ++r) {
        const Plan::Run* run = plan.runs.data() + (n * P + r) * P;
        const int64_t n_runs = plan.n_runs[n * P + r];
        for (int64_t h = rs[r]; h < rs[r + 1]; ++h) {
          const int64_t ro = h * row_bytes;
          for (int64_t k = 0; k < n_runs; ++k) {
            copy_run(base_d + ro + run[k].off, (run[k].from_a ? base_a : base_b) + ro + run[k].off, run[k].len);
          }
        }
      }
    }
  });
}

struct Indices {
  at::Tensor ia_t, ib_t;  // contiguous int64 (ia_t undefined when index_a is None)
  std::vector<int64_t> iota;  // arange(N) for index_a = None
  const int64_t* ia = nullptr;
  const int64_t* ib = nullptr;
};

Indices checked_indices(const std::optional<at::Tensor>& index_a, const at::Tensor& index_b, int64_t N, int64_t B) {
  Indices r;
  r.ib_t = index_b.contiguous();
  r.ib = r.ib_t.data_ptr<int64_t>();
  if (index_a.has_value()) {
    r.ia_t = index_a->contiguous();
    r.ia = r.ia_t.data_ptr<int64_t>();
  } else {
    r.iota.resize(N);
    for (int64_t n = 0; n < N; ++n) r.iota[n] = n;
    r.ia = r.iota.data();
  }
  // Checked before any image byte is read: an index out of range is an error, never an out-of-bounds read.
  check_index("index_b", r.ib, N, B);
  if (index_a.has_value()) check_index("index_a", r.ia, N, B);
  return r;
}

template <typename T>
void add_run(char* d, const char* s, int64_t bytes) {
  T* dt = reinterpret_cast<T*>(d);
  const T* st = reinterpret_cast<const T*>(s);
  const int64_t n = bytes / static_cast<int64_t>(sizeof(T));
  for (int64_t i = 0; i < n; ++i) dt[i] = dt[i] + st[i];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grid_mix_cpu(const at::Tensor& x, const at::Tensor& mask,
                                                const std::optional<at::Tensor>& index_a,
                                                const at::Tensor& index_b) {
  const int64_t N = check_args(x, mask, index_a, index_b, false);
  const auto idx = checked_indices(index_a, index_b, N, x.size(0));
  const auto fmt = output_format(x);
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor out = at::empty({N, x.size(1), x.size(2), x.size(3)}, x.options().memory_format(fmt));
  advise_huge_pages(out.data_ptr(), out.numel() * out.element_size());
  at::Tensor lam = at::empty({N}, x.options().dtype(at::kFloat));
  compose(xc, mask.contiguous(), idx.ia, idx.ib, out, lam,
          fmt == at::MemoryFormat::ChannelsLast);
  return {out, lam};
}

at::Tensor grid_mix_out_cpu(const at::Tensor& x, const at::Tensor& mask, const std::optional<at::Tensor>& index_a,
                            const at::Tensor& index_b, at::Tensor& out) {
  const int64_t N = check_args(x, mask, index_a, index_b, false);
  const auto fmt = output_format(x);
  TORCH_CHECK_VALUE(out.dim() == 4 && out.size(0) == N && out.size(1) == x.size(1) && out.size(2) == x.size(2) &&
                        out.size(3) == x.size(3) && out.scalar_type() == x.scalar_type() && out.device().is_cpu() &&
                        out.is_contiguous(fmt),
                    "grid_mix: out must be a CPU tensor of shape (N, C, H, W), x's dtype and memory format");
  const auto idx = checked_indices(index_a, index_b, N, x.size(0));
  const at::Tensor xc = x.contiguous(fmt);
  at::Tensor lam = at::empty({N}, x.options().dtype(at::kFloat));
  compose(xc, mask.contiguous(), idx.ia, idx.ib, out, lam,
          fmt == at::MemoryFormat::ChannelsLast);
  return lam;
}

at::Tensor grid_mix_backward_cpu(const at::Tensor& grad, const at::Tensor& mask,
                                 const std::optional<at::Tensor>& index_a, const at::Tensor& index_b, int64_t batch) {
  TORCH_CHECK_VALUE(batch >= 0, "grid_mix_backward: batch must be >= 0, got ", batch);
  // grad plays x's part in the shared checks (N == batch when index_a is None is checked there)
  const int64_t N = check_args(grad, mask, index_a, index_b, true, batch);
  TORCH_CHECK_VALUE(grad.size(0) == N, "grid_mix_backward: grad holds ", grad.size(0), " samples but mask holds N = ", N);
  const auto fmt = output_format(grad);
  const at::Tensor gc = grad.contiguous(fmt);
  const int64_t C = grad.size(1), H = grad.size(2), W = grad.size(3);
  at::Tensor grad_x = at::empty({batch, C, H, W}, grad.options().memory_format(fmt));
  if (grad_x.numel() == 0) return grad_x;
  const auto idx = checked_indices(index_a, index_b, N, batch);
  const int64_t* pa = idx.ia;
  const int64_t* pb = idx.ib;
  // Contributors of each image b, in the reference's order: every n with index_a[n] == b (ascending), then
  // every n with index_b[n] == b (ascending). CSR: start[b] .. start[b + 1] in (n, from_a) pairs.
  std::vector<int64_t> start(batch + 1, 0);
  for (int64_t n = 0; n < N; ++n) {
    ++start[pa[n] + 1];
    ++start[pb[n] + 1];
  }
  for (int64_t b = 0; b < batch; ++b) start[b + 1] += start[b];
  std::vector<std::pair<int64_t, bool>> contrib(2 * N);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t n = 0; n < N; ++n) contrib[fill[pa[n]]++] = {n, true};
    for (int64_t n = 0; n < N; ++n) contrib[fill[pb[n]]++] = {n, false};
  }
  const at::Tensor mc = mask.contiguous();
  const Plan plan(mc.data_ptr<bool>(), N, mask.size(1), C, H, W, grad.element_size(), fmt == at::MemoryFormat::ChannelsLast);
  const int64_t P = plan.P, rpi = plan.rows_per_image, row_bytes = plan.row_bytes, image_bytes = plan.image_bytes;
  const auto* src = static_cast<const char*>(gc.data_ptr());
  auto* dst = static_cast<char*>(grad_x.data_ptr());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "grid_mix_backward_cpu", [&] {
    at::parallel_for(0, batch * rpi, row_grain(row_bytes), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / rpi, rin = row % rpi, h = rin % H;
        char* drow = dst + row * row_bytes;
        std::memset(drow, 0, row_bytes);
        for (int64_t k = start[b]; k < start[b + 1]; ++k) {
          const auto [n, from_a] = contrib[k];
          const int64_t nr = n * P + plan.cell_row[h];
          const char* srow = src + n * image_bytes + rin * row_bytes;
          const Plan::Run* run = plan.runs.data() + nr * P;
          for (int64_t r = 0, R = plan.n_runs[nr]; r < R; ++r) {
            if (run[r].from_a == from_a) add_run<scalar_t>(drow + run[r].off, srow + run[r].off, run[r].len);
          }
        }
      }
    });
  });
  return grad_x;
}

TORCH_LIBRARY_FRAGMENT(patchmix, m) {
  m.def("grid_mix(Tensor x, Tensor mask, Tensor? index_a, Tensor index_b) -> (Tensor, Tensor)");
  m.def("grid_mix_out(Tensor x, Tensor mask, Tensor? index_a, Tensor index_b, Tensor(a!) out) -> Tensor");
  m.def("grid_mix_backward(Tensor grad, Tensor mask, Tensor? index_a, Tensor index_b, int batch) -> Tensor");
}

TORCH_LIBRARY_IMPL(patchmix, CPU, m) {
  m.impl("grid_mix", &grid_mix_cpu);
  m.impl("grid_mix_out", &grid_mix_out_cpu);
  m.impl("grid_mix_backward", &grid_mix_backward_cpu);
}

}  // namespace patchmix
