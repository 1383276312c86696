// patchmix::population_fitness, CPU kernel.
//
// One task per individual (at::parallel_for over the population); every individual's sum runs in a fixed
// order in float64, so results do not depend on the thread count (the search relies on that for
// reproducibility). Patch term: one table lookup per active cell, I*N*P*P gathers in all (500 x 200 x 16
// = 1.6M per generation at CIFAR-100 scale, about a millisecond). With the interaction table (Q, P*P, 2, P*P):
// P^2 * P^2 multiply-adds per active slot (pairwise_fixed below). Image term (image_weight != 0): per
// active slot and draw, K-wide sums of P*P source patch logits, then a log-sum-exp.
//
// Interaction table, measured on the 2-core dev machine (CPU time of one thread, loaded machine, float64, P = 4):
// ~41 ns per slot while the table is cache-resident (CIFAR-10 scale, Q = 55: 0.41 ms a generation of 500 x 20
// slots), ~220 ns when it is not (CIFAR-100 scale, Q = 5050: a 20.7 MB table read at random, ~2 KB a slot:
// 22 ms a generation; a software prefetch of the next slot's rows measured within the noise, so there is none).
// Exhaustive enumeration, all 2^16 masks of a 4x4 grid for each of Q = 55 pairs (3.6M slots, 9.2e8
// multiply-adds) in 5 calls of 11 x 65536 slots, timed once from Python (time.perf_counter around the calls,
// inputs built beforehand): 0.44 s wall, 0.24 s CPU at load 7; bench/bench_population_fitness.py::
// test_exhaustive_enumeration does the same: 0.40-0.43 s, the best of 3 rounds in two runs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

namespace patchmix {

namespace {

void check_range(const char* name, const int64_t* p, int64_t n, int64_t lo, int64_t hi, const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(p[i] >= lo && p[i] < hi, "population_fitness: ", name, " holds ", p[i], ", out of range ",
                      what, " (expected ", lo, " <= ", name, " < ", hi, ")");
  }
}

// P^2 times the patch term of one slot with the interaction table: t = table[q] (PP, 2, PP), m = its mask bits.
// Row n on side s = m[n] is r = t[n, s, :]; it contributes r[n] + sum_j r[j] * [m[j] != s]. The 0/1 factors
// are precomputed per slot (w[0][j] = m[j] for the rows on side 0, w[1][j] = 1 - m[j] for side 1; both 0 on the
// diagonal, which is summed on its own), and the products are accumulated per column, acc[j] += r[j] * w[s][j]
// over the rows n in order, then added up: diagonal, then columns in order. Per column the lanes are
// independent, so this vectorises without reassociating any sum, and a 0/1 product is exact (FMA contraction
// changes nothing): every ISA variant and thread count gives the same bits. (A select instead of the product
// would skip the unused entries, but measured 1.4x slower on v3/v4 and 6x on the baseline; so an inf or NaN in a
// used row makes the slot NaN, on every backend.)
//
// Written with GCC vector extensions (DVec<W>: W doubles, 2 / 4 / 8 for the baseline / v3 / v4 variants), the
// column loop unrolled for P = 1..8 (kPP = P*P columns in (kPP + W - 1) / W registers, padded lanes 0). Plain
// arrays instead measured 3-4x slower: GCC turned the per-slot weights into branches (mispredicted on random
// masks) and kept acc in memory. Measured through the op on the 2-core dev machine (CPU time of one thread,
// P = 4, float64, all 2^16 masks of 5 pairs, best of 5): 41 ns a slot with v4, 45 ns with v3, 86 ns with the
// baseline, 183 ns for the first, plain-array version (v4); the per-cell table: 14 ns a slot.
template <int W>
struct DVec;
template <>
struct DVec<2> {
  typedef double v __attribute__((vector_size(16)));
};
template <>
struct DVec<4> {
  typedef double v __attribute__((vector_size(32)));
};
template <>
struct DVec<8> {
  typedef double v __attribute__((vector_size(64)));
};

template <typename scalar_t, int kPP, int W>
PATCHMIX_INLINE double pairwise_fixed(const scalar_t* t, const bool* m) {
  using V = typename DVec<W>::v;
  constexpr int NV = (kPP + W - 1) / W;
  V w[2][NV], acc[NV];
  for (int v = 0; v < NV; ++v) {
    for (int l = 0; l < W; ++l) {
      const int j = v * W + l;
      const double x = j < kPP ? static_cast<double>(m[j]) : 0.0;  // a conversion, not a branch
      w[0][v][l] = x;
      w[1][v][l] = j < kPP ? 1.0 - x : 0.0;
    }
    acc[v] = V{};
  }
  double diag = 0.0;
  for (int n = 0; n < kPP; ++n) {
    const int s = m[n] ? 1 : 0;
    const scalar_t* r = t + (n * 2 + s) * kPP;
    diag += static_cast<double>(r[n]);
#pragma GCC unroll 32
    for (int v = 0; v < NV; ++v) {
      V rv;
      for (int l = 0; l < W; ++l) {
        const int j = v * W + l;
        rv[l] = j < kPP ? static_cast<double>(r[j]) : 0.0;
      }
      acc[v] += rv * w[s][v];
    }
  }
  double sum = diag;
  for (int v = 0; v < NV; ++v) {
    for (int l = 0; l < W; ++l) sum += acc[v][l];
  }
  return sum;
}

// Any P (P > 8): the same sums in the same order, scalar; buf holds 3 * PP doubles.
template <typename scalar_t>
PATCHMIX_INLINE double pairwise_any(const scalar_t* t, const bool* m, int64_t PP, double* buf) {
  double* const w0 = buf;
  double* const w1 = buf + PP;
  double* const acc = buf + 2 * PP;
  for (int64_t j = 0; j < PP; ++j) {
    w0[j] = static_cast<double>(m[j]);
    w1[j] = 1.0 - w0[j];
    acc[j] = 0.0;
  }
  double diag = 0.0;
  for (int64_t n = 0; n < PP; ++n) {
    const scalar_t* r = t + (n * 2 + (m[n] ? 1 : 0)) * PP;
    const double* w = m[n] ? w1 : w0;
    diag += static_cast<double>(r[n]);
    for (int64_t j = 0; j < PP; ++j) acc[j] += static_cast<double>(r[j]) * w[j];
  }
  double sum = diag;
  for (int64_t j = 0; j < PP; ++j) sum += acc[j];
  return sum;
}

template <typename scalar_t>
using PairwiseFn = double (*)(const scalar_t* t, const bool* m, int64_t PP, double* buf);

template <typename scalar_t, int W>
PATCHMIX_INLINE double pairwise_slot(const scalar_t* t, const bool* m, int64_t PP, double* buf) {
  switch (PP) {
    case 1: return pairwise_fixed<scalar_t, 1, W>(t, m);
    case 4: return pairwise_fixed<scalar_t, 4, W>(t, m);
    case 9: return pairwise_fixed<scalar_t, 9, W>(t, m);
    case 16: return pairwise_fixed<scalar_t, 16, W>(t, m);
    case 25: return pairwise_fixed<scalar_t, 25, W>(t, m);
    case 36: return pairwise_fixed<scalar_t, 36, W>(t, m);
    case 49: return pairwise_fixed<scalar_t, 49, W>(t, m);
    case 64: return pairwise_fixed<scalar_t, 64, W>(t, m);
    default: return pairwise_any<scalar_t>(t, m, PP, buf);
  }
}

#define PATCHMIX_PAIRWISE(SUFFIX, ATTR, W)                                                           \
  ATTR double pairwise_##SUFFIX##_f32(const float* t, const bool* m, int64_t PP, double* buf) {     \
    return pairwise_slot<float, W>(t, m, PP, buf);                                                   \
  }                                                                                                  \
  ATTR double pairwise_##SUFFIX##_f64(const double* t, const bool* m, int64_t PP, double* buf) {    \
    return pairwise_slot<double, W>(t, m, PP, buf);                                                  \
  }

PATCHMIX_PAIRWISE(base, , 2)
#ifdef PATCHMIX_X86_ISAS
PATCHMIX_PAIRWISE(v3, PATCHMIX_TARGET_V3, 4)
PATCHMIX_PAIRWISE(v4, PATCHMIX_TARGET_V4, 8)
#endif

// The widest variant this CPU runs (cpu_isa()).
template <typename scalar_t>
PairwiseFn<scalar_t> pairwise_fn() {
  constexpr bool f32 = std::is_same_v<scalar_t, float>;
  switch (cpu_isa()) {
#ifdef PATCHMIX_X86_ISAS
    case Isa::x86_64_v4:
      if constexpr (f32) return pairwise_v4_f32; else return pairwise_v4_f64;
    case Isa::x86_64_v3:
      if constexpr (f32) return pairwise_v3_f32; else return pairwise_v3_f64;
#endif
    default:
      if constexpr (f32) return pairwise_base_f32; else return pairwise_base_f64;
  }
}

// Multiply-adds of the interaction term that cost about one table lookup of the per-cell term: a lookup takes
// ~0.9 ns (14 ns a 16-cell slot), 4 multiply-adds ~0.6 ns in cache (41 ns a 256-term slot) and ~3.4 ns out of it.
constexpr int64_t PAIRWISE_STEPS = 4;

template <typename scalar_t>
void fitness_kernel(const scalar_t* table, const int64_t* pairs, const bool* masks, const scalar_t* logits,
                    const int64_t* draws, const int64_t* classes, scalar_t* out, int64_t I, int64_t N, int64_t PP,
                    int64_t S, int64_t K, double image_weight, bool interaction) {
  const bool image = image_weight != 0.0;
  const double inv_pp = 1.0 / static_cast<double>(PP);
  const PairwiseFn<scalar_t> pairwise = pairwise_fn<scalar_t>();
  // Inner steps per individual (about a nanosecond each): a table lookup per cell, or PAIRWISE_STEPS
  // multiply-adds of the interaction term, and K-wide sums per cell and draw for the image term.
  const int64_t work = N * (interaction ? PP * PP / PAIRWISE_STEPS : PP) + (image ? N * PP * S * K : 0);
  // Threads only for large populations (>= ~4M inner steps, several ms): a patch-only generation at CIFAR-100
  // scale (1.6M lookups, ~1.3 ms serial) runs faster on one thread than it waits for a second one on a
  // loaded machine (measured: 8 ms median with 2 OpenMP threads at load 4 on 2 cores). With the interaction
  // table a CIFAR-10-scale generation (0.64M steps, 0.41 ms CPU) stays on one thread; a CIFAR-100-scale one
  // (6.4M steps, ~22 ms CPU, memory-bound) and an enumeration call of two or more pairs of 65536 masks (>= 8.4M
  // steps) use both. On the dev machine at load 7 on 2 cores the second thread did not pay at CIFAR-100 scale
  // (best of 15 calls: 41-43 ms with one thread, 44-60 ms with two); the rule is kept because that work is far
  // above the several milliseconds a thread start costs on a loaded machine (a quiet one was not available).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(work, 1));
  at::parallel_for(0, I, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> u(image ? K : 0);
    std::vector<double> buf(interaction ? 3 * PP : 0);
    for (int64_t i = begin; i < end; ++i) {
      double total = 0.0;
      int64_t count = 0;
      for (int64_t k = 0; k < N; ++k) {
        const int64_t q = pairs[i * N + k];
        if (q < 0) continue;
        ++count;
        const bool* m = masks + (i * N + k) * PP;
        double patch = 0.0;
        if (interaction) {
          patch = pairwise(table + q * PP * 2 * PP, m, PP, buf.data());
        } else {
          const scalar_t* t = table + q * PP * 2;
          for (int64_t n = 0; n < PP; ++n) patch += static_cast<double>(t[n * 2 + (m[n] ? 1 : 0)]);
        }
        double slot = patch * inv_pp;
        if (image) {
          int64_t ones = 0;
          for (int64_t n = 0; n < PP; ++n) ones += m[n] ? 1 : 0;
          const double lam = static_cast<double>(ones) * inv_pp;
          const int64_t ci = classes[q * 2], cj = classes[q * 2 + 1];
          double img = 0.0;
          for (int64_t s = 0; s < S; ++s) {
            const int64_t a = draws[(q * S + s) * 2], b = draws[(q * S + s) * 2 + 1];
            std::fill(u.begin(), u.end(), 0.0);
            for (int64_t n = 0; n < PP; ++n) {
              const scalar_t* z = logits + ((m[n] ? a : b) * PP + n) * K;
              for (int64_t c = 0; c < K; ++c) u[c] += static_cast<double>(z[c]);
            }
            double mx = -std::numeric_limits<double>::infinity();
            for (int64_t c = 0; c < K; ++c) {
              u[c] *= inv_pp;
              mx = std::max(mx, u[c]);
            }
            double se = 0.0;
            for (int64_t c = 0; c < K; ++c) se += std::exp(u[c] - mx);
            const double lse = mx + std::log(se);
            img += lam * (u[ci] - lse) + (1.0 - lam) * (u[cj] - lse);
          }
          slot += image_weight * img / static_cast<double>(S);
        }
        total += slot;
      }
      out[i] = static_cast<scalar_t>(count > 0 ? total / static_cast<double>(count)
                                               : std::numeric_limits<double>::quiet_NaN());
    }
  });
}

}  // namespace

at::Tensor population_fitness_cpu(const at::Tensor& table, const at::Tensor& pairs, const at::Tensor& masks,
                                  const std::optional<at::Tensor>& logits, const std::optional<at::Tensor>& draws,
                                  const std::optional<at::Tensor>& pair_classes, double image_weight) {
  const auto dt = table.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kDouble, "population_fitness: table has dtype ", dt,
                    "; expected float32 or float64");
  TORCH_CHECK_VALUE(masks.scalar_type() == at::kBool, "population_fitness: masks must be a bool tensor, got dtype ",
                    masks.scalar_type());
  TORCH_CHECK_VALUE(masks.dim() == 4 && masks.size(2) == masks.size(3),
                    "population_fitness: masks must have shape (I, N, P, P), got ", masks.sizes());
  const int64_t I = masks.size(0), N = masks.size(1), P = masks.size(2), PP = P * P;
  TORCH_CHECK_VALUE(pairs.scalar_type() == at::kLong && pairs.dim() == 2 && pairs.size(0) == I && pairs.size(1) == N,
                    "population_fitness: pairs must be int64 of shape (I, N) = (", I, ", ", N, "), got ",
                    pairs.scalar_type(), " ", pairs.sizes());
  const bool interaction = table.dim() == 4;
  TORCH_CHECK_VALUE((table.dim() == 3 || (interaction && table.size(3) == PP)) && table.size(1) == PP &&
                        table.size(2) == 2,
                    "population_fitness: table must have shape (Q, P*P, 2) = (Q, ", PP, ", 2) or, as an interaction "
                    "table, (Q, P*P, 2, P*P) = (Q, ", PP, ", 2, ", PP, "), got ", table.sizes());
  TORCH_CHECK_VALUE(std::isfinite(image_weight), "population_fitness: image_weight must be finite, got ",
                    image_weight);
  const int64_t Q = table.size(0);
  const bool image = image_weight != 0.0;
  int64_t S = 0, K = 0, V = 0;
  if (image) {
    TORCH_CHECK_VALUE(logits.has_value() && draws.has_value() && pair_classes.has_value(),
                      "population_fitness: image_weight = ", image_weight,
                      " needs logits, draws and pair_classes, or image_weight = 0");
    TORCH_CHECK_VALUE(logits->scalar_type() == dt, "population_fitness: logits has dtype ", logits->scalar_type(),
                      "; it must match table (", dt, ")");
    TORCH_CHECK_VALUE(logits->dim() == 3 && logits->size(1) == PP && logits->size(2) >= 1,
                      "population_fitness: logits must have shape (V, P*P, K) = (V, ", PP, ", K), got ",
                      logits->sizes());
    TORCH_CHECK_VALUE(draws->scalar_type() == at::kLong && draws->dim() == 3 && draws->size(0) == Q &&
                          draws->size(1) >= 1 && draws->size(2) == 2,
                      "population_fitness: draws must be int64 of shape (Q, S, 2) = (", Q, ", S >= 1, 2), got ",
                      draws->scalar_type(), " ", draws->sizes());
    TORCH_CHECK_VALUE(pair_classes->scalar_type() == at::kLong && pair_classes->dim() == 2 &&
                          pair_classes->size(0) == Q && pair_classes->size(1) == 2,
                      "population_fitness: pair_classes must be int64 of shape (Q, 2) = (", Q, ", 2), got ",
                      pair_classes->scalar_type(), " ", pair_classes->sizes());
    V = logits->size(0);
    K = logits->size(2);
    S = draws->size(1);
  }
  for (const at::Tensor* t : {&table, &pairs, &masks}) {
    TORCH_CHECK_VALUE(t->device().is_cpu(), "population_fitness: the CPU kernel got a tensor on ", t->device());
  }

  const at::Tensor tc = table.contiguous();
  const at::Tensor pc = pairs.contiguous();
  const at::Tensor mc = masks.contiguous();
  at::Tensor lc, dc, cc;
  // Index data is checked before any table or logit entry is read: never an out-of-bounds read.
  check_range("pairs", pc.data_ptr<int64_t>(), pc.numel(), -1, Q, "for the table's Q pairs (-1 marks an inactive slot)");
  if (image) {
    lc = logits->contiguous();
    dc = draws->contiguous();
    cc = pair_classes->contiguous();
    check_range("draws", dc.data_ptr<int64_t>(), dc.numel(), 0, V, "for the V validation images of logits");
    check_range("pair_classes", cc.data_ptr<int64_t>(), cc.numel(), 0, K, "for the K classes of logits");
  }
  at::Tensor out = at::empty({I}, table.options());
  if (I == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(dt, "population_fitness_cpu", [&] {
    fitness_kernel<scalar_t>(tc.data_ptr<scalar_t>(), pc.data_ptr<int64_t>(), mc.data_ptr<bool>(),
                             image ? lc.data_ptr<scalar_t>() : nullptr, image ? dc.data_ptr<int64_t>() : nullptr,
                             image ? cc.data_ptr<int64_t>() : nullptr, out.data_ptr<scalar_t>(), I, N, PP, S, K,
                             image_weight, interaction);
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(patchmix, m) {
  m.def(
      "population_fitness(Tensor table, Tensor pairs, Tensor masks, Tensor? logits, Tensor? draws, "
      "Tensor? pair_classes, float image_weight) -> Tensor");
}

TORCH_LIBRARY_IMPL(patchmix, CPU, m) { m.impl("population_fitness", &population_fitness_cpu); }

}  // namespace patchmix
