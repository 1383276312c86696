// patchmix::population_fitness, CPU kernel.
//
// One task per individual (at::parallel_for over the population); every individual's sum runs in a fixed
// order in float64, so results do not depend on the thread count (the search relies on that for
// reproducibility). Patch term: one table lookup per active cell, I*N*P*P gathers in all (500 x 200 x 16
// = 1.6M per generation at CIFAR-100 scale, about a millisecond). Image term (image_weight != 0): per
// active slot and draw, K-wide sums of P*P source patch logits, then a log-sum-exp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace patchmix {

namespace {

void check_range(const char* name, const int64_t* p, int64_t n, int64_t lo, int64_t hi, const char* what) {
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(p[i] >= lo && p[i] < hi, "population_fitness: ", name, " holds ", p[i], ", out of range ",
                      what, " (expected ", lo, " <= ", name, " < ", hi, ")");
  }
}

template <typename scalar_t>
void fitness_kernel(const scalar_t* table, const int64_t* pairs, const bool* masks, const scalar_t* logits,
                    const int64_t* draws, const int64_t* classes, scalar_t* out, int64_t I, int64_t N, int64_t PP,
                    int64_t S, int64_t K, double image_weight) {
  const bool image = image_weight != 0.0;
  const double inv_pp = 1.0 / static_cast<double>(PP);
  const int64_t work = N * PP * (image ? S * K : 1);
  // Threads only for large populations (>= ~4M inner steps, several ms): a patch-only generation at CIFAR-100
  // scale (1.6M lookups, ~1.3 ms serial) runs faster on one thread than it waits for a second one on a
  // loaded machine (measured: 8 ms median with 2 OpenMP threads at load 4 on 2 cores).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 22) / std::max<int64_t>(work, 1));
  at::parallel_for(0, I, grain, [&](int64_t begin, int64_t end) {
    std::vector<double> u(image ? K : 0);
    for (int64_t i = begin; i < end; ++i) {
      double total = 0.0;
      int64_t count = 0;
      for (int64_t k = 0; k < N; ++k) {
        const int64_t q = pairs[i * N + k];
        if (q < 0) continue;
        ++count;
        const bool* m = masks + (i * N + k) * PP;
        const scalar_t* t = table + q * PP * 2;
        double patch = 0.0;
        int64_t ones = 0;
        for (int64_t n = 0; n < PP; ++n) {
          patch += static_cast<double>(t[n * 2 + (m[n] ? 1 : 0)]);
          ones += m[n] ? 1 : 0;
        }
        double slot = patch * inv_pp;
        if (image) {
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
  TORCH_CHECK_VALUE(table.dim() == 3 && table.size(1) == PP && table.size(2) == 2,
                    "population_fitness: table must have shape (Q, P*P, 2) = (Q, ", PP, ", 2), got ", table.sizes());
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
                             image_weight);
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
