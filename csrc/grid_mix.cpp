// patchmix::grid_mix, CPU kernel.
//
// Every output row segment that lies in one grid cell comes from exactly one source image, so the kernel
// is a sequence of memcpy calls over runs of consecutive cells that share a source (dtype-agnostic: it
// copies bytes, which is why uint8 costs nothing extra). Floor: read N*C*H*W elements once, write them
// once, the same bytes as x.clone() when N == B.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <cstdint>
#include <cstring>
#include <optional>
#ifdef __linux__
#include <sys/mman.h>
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

void check_index(const char* name, const int64_t* idx, int64_t n, int64_t batch) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(idx[i] >= 0 && idx[i] < batch, "grid_mix: ", name, "[", i, "] = ", idx[i],
                      " is out of range for x with batch size B = ", batch, " (expected 0 <= ", name,
                      " < ", batch, ")");
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> grid_mix_cpu(const at::Tensor& x, const at::Tensor& mask,
                                                const std::optional<at::Tensor>& index_a,
                                                const at::Tensor& index_b) {
  TORCH_CHECK_VALUE(x.dim() == 4, "grid_mix: x must have shape (B, C, H, W), got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kByte || dt == at::kDouble,
                    "grid_mix: x has dtype ", dtype_name(dt), "; expected one of float32, float16, bfloat16, uint8 (or float64)");
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool, "grid_mix: mask must be a bool tensor, got dtype ",
                    dtype_name(mask.scalar_type()));
  TORCH_CHECK_VALUE(mask.dim() == 3 && mask.size(1) == mask.size(2),
                    "grid_mix: mask must have shape (N, P, P), got ", mask.sizes());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t N = mask.size(0), P = mask.size(1);
  TORCH_CHECK_VALUE(P >= 1 && P <= std::min(H, W), "grid_mix: grid size P = ", P,
                    " must satisfy 1 <= P <= min(H, W) = ", std::min(H, W), " for x of shape ", x.sizes());
  auto check_index_meta = [&](const char* name, const at::Tensor& idx) {
    TORCH_CHECK_VALUE(idx.scalar_type() == at::kLong, "grid_mix: ", name, " must be int64, got dtype ",
                      dtype_name(idx.scalar_type()));
    TORCH_CHECK_VALUE(idx.dim() == 1 && idx.size(0) == N, "grid_mix: ", name, " must have shape (N,) = (", N,
                      ",) to match mask, got ", idx.sizes());
  };
  if (index_a.has_value()) check_index_meta("index_a", *index_a);
  check_index_meta("index_b", index_b);
  if (index_a.has_value()) {
    TORCH_CHECK_VALUE(index_a->device() == x.device(), "grid_mix: index_a is on ", index_a->device(),
                      " but x is on ", x.device());
  } else {
    TORCH_CHECK_VALUE(N == B, "grid_mix: index_a is None (meaning arange(B)), so mask must hold B = ", B,
                      " masks, got N = ", N);
  }
  for (const at::Tensor* t : {&x, &mask, &index_b}) {
    TORCH_CHECK_VALUE(t->device().is_cpu(), "grid_mix: the CPU kernel got a tensor on ", t->device());
  }

  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor xc = x.contiguous(fmt);
  const at::Tensor mc = mask.contiguous();
  const at::Tensor ib = index_b.contiguous();
  const at::Tensor ia = index_a.has_value() ? index_a->contiguous() : at::arange(N, index_b.options());
  // Checked before any image byte is read: an index out of range is an error, never an out-of-bounds read.
  check_index("index_b", ib.data_ptr<int64_t>(), N, B);
  if (index_a.has_value()) check_index("index_a", ia.data_ptr<int64_t>(), N, B);

  at::Tensor out = at::empty({N, C, H, W}, x.options().memory_format(fmt));
  advise_huge_pages(out.data_ptr(), out.numel() * out.element_size());
  at::Tensor lam = at::empty({N}, x.options().dtype(at::kFloat));
  if (N == 0) return {out, lam};

  const auto rs = cell_starts(H, P), cs = cell_starts(W, P);
  const bool* m = mc.data_ptr<bool>();
  const int64_t* pa = ia.data_ptr<int64_t>();
  const int64_t* pb = ib.data_ptr<int64_t>();
  const auto* src = static_cast<const char*>(xc.data_ptr());
  auto* dst = static_cast<char*>(out.data_ptr());
  const int64_t es = x.element_size();
  float* plam = lam.data_ptr<float>();

  // Mixing weight: sum of the True cells' pixel areas, exact for uneven cells.
  for (int64_t n = 0; n < N; ++n) {
    int64_t count = 0;
    for (int64_t r = 0; r < P; ++r)
      for (int64_t q = 0; q < P; ++q)
        if (m[(n * P + r) * P + q]) count += (rs[r + 1] - rs[r]) * (cs[q + 1] - cs[q]);
    plam[n] = static_cast<float>(static_cast<double>(count) / static_cast<double>(H * W));
  }

  // One output "row" is W pixels (contiguous: of one channel, C*H rows per image; channels_last: of all
  // C channels interleaved, H rows per image). `px` is the byte size of one pixel within a row.
  const int64_t rows_per_image = channels_last ? H : C * H;
  const int64_t px = channels_last ? C * es : es;
  const int64_t row_bytes = W * px;
  const int64_t image_bytes = C * H * W * es;
  const int64_t total_rows = N * rows_per_image;
  // The copy plan of each (sample, cell row): runs of consecutive cells with one source, as byte ranges of a
  // row. Built once here (N*P*P steps), so the row loop below does no mask scan and no integer division:
  // at 256x3x32x32 (32-byte cells) the per-row divisions and scans took over half of the kernel's time.
  struct Run {
    int64_t off, len;
    bool from_a;
  };
  std::vector<Run> runs(N * P * P);
  std::vector<int64_t> n_runs(N * P);
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
  std::vector<int64_t> cell_row(H);  // floor(h * P / H)
  for (int64_t h = 0; h < H; ++h) cell_row[h] = h * P / H;

  // ~32 KiB of output per task keeps the OpenMP overhead below 1% at 224x224.
  const int64_t grain = std::max<int64_t>(1, (32 * 1024) / std::max<int64_t>(row_bytes, 1));
  at::parallel_for(0, total_rows, grain, [&](int64_t begin, int64_t end) {
    int64_t n = begin / rows_per_image, rin = begin % rows_per_image, h = rin % H;  // advanced per row
    for (int64_t row = begin; row < end; ++row) {
      const int64_t nr = n * P + cell_row[h];
      const char* srow_a = src + pa[n] * image_bytes + rin * row_bytes;
      const char* srow_b = src + pb[n] * image_bytes + rin * row_bytes;
      char* drow = dst + row * row_bytes;
      const Run* run = runs.data() + nr * P;
      for (int64_t k = 0; k < n_runs[nr]; ++k) {
        std::memcpy(drow + run[k].off, (run[k].from_a ? srow_a : srow_b) + run[k].off, run[k].len);
      }
      if (++h == H) h = 0;
      if (++rin == rows_per_image) {
        rin = 0;
        ++n;
      }
    }
  });
  return {out, lam};
}

TORCH_LIBRARY_FRAGMENT(patchmix, m) {
  m.def("grid_mix(Tensor x, Tensor mask, Tensor? index_a, Tensor index_b) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(patchmix, CPU, m) { m.impl("grid_mix", &grid_mix_cpu); }

}  // namespace patchmix
