// patchmix::patchmix_cross_entropy, CPU kernel.
//
// L_T = image_weight * CE(image_logits, soft target) + patch_weight / P^2 * sum_p CE(patch_logits[p], label_p),
// with the gradient w.r.t. both logits computed in the same pass (the op returns (loss, grad_image,
// grad_patch); backward only scales them). Every target mixes at most two classes, so one row needs its
// max m, s = sum exp(x - m), sd = sum (x - m) (label smoothing only) and two gathered logits:
//   CE = (1 - eps) * (w_a * (log s - (x_a - m)) + w_b * (log s - (x_b - m))) + eps * (log s - sd / K)
//   dCE/dx_k = exp(x_k - m) / s - (1 - eps) * (w_a [k == a] + w_b [k == b]) - eps / K
// No one-hot, soft-target or log-softmax tensor exists; per row (or per sample tile) the exponentials are
// kept in the gradient's own memory (or a cache-resident scratch) and rescaled in place, so the logits are
// read from memory once and the gradient written once.
//
// Two loop shapes, chosen from the strides (never a .contiguous() copy of the logits):
// * rows: classes contiguous (image logits (N, K), patch logits (N, P*P, K) or channels_last (N, K, P, P));
//   vectorised along K.
// * lanes: the head's natural (N, K, P, P), where the P*P patches of one class are contiguous; one sample's
//   (K, P*P) tile is processed with the patches as vector lanes (one tile is 64 KiB at K = 1000, P = 4,
//   so it stays in L2 between the three sweeps).
// Other strides and float16/bfloat16 are gathered into a float32 scratch (accumulation is always float32,
// float64 for float64 logits). Parallel over samples with at::parallel_for; the batch reduction is a
// sequential sum in double over per-sample losses (deterministic, independent of the thread count).
//
// Vectorisation: the float32 loops are plain branchless C++ with `#pragma omp simd`, compiled three times
// (x86-64-v4 with 512-bit vectors, x86-64-v3, baseline) with GCC target attributes and picked at run time,
// because an extension build gets no CPU_CAPABILITY flags and ATen's at::vec::Vectorized would fall back to
// its scalar implementation. exp uses a Cephes-style polynomial (max rel. error ~2e-7 on the arguments
// x - m <= 0 that occur here), vectorisable unlike std::exp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// The float vector helpers below never pass vectors across an ABI boundary (always inlined); GCC's -Wpsabi
// notes about AVX vector arguments are noise here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace patchmix {

namespace {

// -------------------------------------------------------------------------------------------------
// element math
// -------------------------------------------------------------------------------------------------

// exp(x) for x <= 0 (the only arguments here: x - max); 0 below the float range, NaN for NaN. F is float, or
// a GCC float vector with I its int32 vector (vexp_nonpos below): one body, so every lane width and the
// scalar tails give the same results.
template <typename F, typename I>
PATCHMIX_INLINE F exp_nonpos_impl(F x) {
  const F zero = F{};
  const F lo = zero - 87.33654f;  // log(FLT_MIN)
  F xc = x > lo ? x : lo;  // NaN -> lo, so the int conversion below is defined
  xc = xc < zero ? xc : zero;
  const F t = xc * 1.44269504088896341f;
  const F n = (t + 12582912.f) - 12582912.f;  // round to nearest (|t| < 2^22), vectorises everywhere
  F r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  F p = zero + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  I n_int;
  if constexpr (std::is_same_v<F, float>) {
    n_int = static_cast<int32_t>(n);
  } else {
    n_int = __builtin_convertvector(n, I);
  }
  const I bits = (n_int + 127) << 23;
  F scale;
  std::memcpy(&scale, &bits, sizeof(F));
  F y = p * scale;
  y = x < lo ? zero : y;
  return x != x ? x : y;
}

PATCHMIX_INLINE float exp_nonpos(float x) { return exp_nonpos_impl<float, int32_t>(x); }

inline double exp_nonpos(double x) { return std::exp(x); }

// log(x) for the sums of exponentials here (x >= 1: the row's largest term is exp(0) = 1; or NaN). Cephes logf,
// branchless so that the per-patch logs of a sample vectorise (at K = 10 the P*P scalar std::log calls were
// about a third of the op's time).
PATCHMIX_INLINE float log_ge1(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(float));
  const int32_t e = ((bits >> 23) & 0xff) - 126;
  const int32_t mbits = (bits & 0x007fffff) | 0x3f000000;
  float m;
  std::memcpy(&m, &mbits, sizeof(float));  // x = m * 2^e, m in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  const float ef = static_cast<float>(small ? e - 1 : e);
  m = small ? m + m - 1.f : m - 1.f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * ef;
  y += -0.5f * z;
  const float r = m + y + 0.693359375f * ef;
  return x == x && x < std::numeric_limits<float>::infinity() ? r : x;
}

inline double log_ge1(double x) { return std::log(x); }

// -------------------------------------------------------------------------------------------------
// loops (templates; the float instantiations are compiled per ISA below)
// -------------------------------------------------------------------------------------------------

template <typename T>
PATCHMIX_INLINE T row_max_impl(const T* x, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

// s = sum exp(x - m), sd = sum (x - m); stores exp(x - m) into e when e != nullptr (e may alias x).
template <typename T>
PATCHMIX_INLINE void row_expsum_impl(const T* x, T m, int64_t n, T* e, T* out_s, T* out_sd) {
  T s = 0, sd = 0;
  if (e != nullptr) {
#pragma omp simd reduction(+ : s, sd)
    for (int64_t i = 0; i < n; ++i) {
      const T d = x[i] - m;
      const T v = exp_nonpos(d);
      e[i] = v;
      s += v;
      sd += d;
    }
  } else {
#pragma omp simd reduction(+ : s, sd)
    for (int64_t i = 0; i < n; ++i) {
      const T d = x[i] - m;
      s += exp_nonpos(d);
      sd += d;
    }
  }
  *out_s = s;
  *out_sd = sd;
}

template <typename T>
PATCHMIX_INLINE void row_affine_impl(T* e, int64_t n, T a, T b) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) e[i] = e[i] * a - b;
}

// lanes: element (k, p) at x[k * sx + p], p < L contiguous. Processed in blocks of WIDE (one or two vector
// registers of the variant: 16 floats for x86-64-v4, 8 for v3, 4 for the baseline), 4 and 1 lanes so that
// each block's accumulators live in registers across the K sweep (a runtime lane count would keep them in
// memory: forward with gradient at N = 256, K = 1000, P = 4 went from 5.0 ms to 3.0 ms on one core).
template <typename T, int W>
PATCHMIX_INLINE void lanes_max_block(const T* x, int64_t sx, int64_t K, T* m) {
  T acc[W];
  for (int j = 0; j < W; ++j) acc[j] = -std::numeric_limits<T>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    const T* xk = x + k * sx;
#pragma omp simd
    for (int j = 0; j < W; ++j) acc[j] = xk[j] > acc[j] ? xk[j] : acc[j];
  }
  for (int j = 0; j < W; ++j) m[j] = acc[j];
}

template <typename T, int W>
PATCHMIX_INLINE void lanes_expsum_block(const T* x, int64_t sx, int64_t K, const T* m, T* e, int64_t se, T* s,
                                        T* sd) {
  T mm[W], ss[W], dd[W];
  for (int j = 0; j < W; ++j) {
    mm[j] = m[j];
    ss[j] = dd[j] = 0;
  }
  for (int64_t k = 0; k < K; ++k) {
    const T* xk = x + k * sx;
    if (e != nullptr) {
      T* ek = e + k * se;
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        const T d = xk[j] - mm[j];
        const T v = exp_nonpos(d);
        ek[j] = v;
        ss[j] += v;
        dd[j] += d;
      }
    } else {
#pragma omp simd
      for (int j = 0; j < W; ++j) {
        const T d = xk[j] - mm[j];
        ss[j] += exp_nonpos(d);
        dd[j] += d;
      }
    }
  }
  for (int j = 0; j < W; ++j) {
    s[j] = ss[j];
    sd[j] = dd[j];
  }
}

template <typename T, int W>
PATCHMIX_INLINE void lanes_affine_block(T* e, int64_t se, int64_t K, const T* a, T b) {
  T aa[W];
  for (int j = 0; j < W; ++j) aa[j] = a[j];
  for (int64_t k = 0; k < K; ++k) {
    T* ek = e + k * se;
#pragma omp simd
    for (int j = 0; j < W; ++j) ek[j] = ek[j] * aa[j] - b;
  }
}

// float32 blocks as GCC/Clang vector types: a block of W lanes is one W-wide vector (one zmm for W = 16 on
// x86-64-v4, one ymm for W = 8 on v3, one xmm for W = 4), so each sweep is straight-line SIMD code. The
// `omp simd` form above vectorises only on v4 (GCC fully unrolls the fixed-width loop, then its SLP pass gives
// up on the selects without AVX-512 masks): at N = 256, K = 1000, P = 4 the x86-64-v3 forward took 17 ms
// with it and ~5 ms with these.
#if defined(__GNUC__)
#define PATCHMIX_VECTOR_TYPES 1
// Vector arguments of these always-inline helpers never cross an ABI boundary; GCC reports the -Wpsabi note
// where the templates are instantiated (the end of the file), so it stays off for the rest of this file.
#pragma GCC diagnostic ignored "-Wpsabi"
template <int W>
struct FVec {
  typedef float f __attribute__((vector_size(W * sizeof(float))));
  typedef int32_t i __attribute__((vector_size(W * sizeof(float))));
};

template <int W>
PATCHMIX_INLINE typename FVec<W>::f vload(const float* p) {
  typename FVec<W>::f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <int W>
PATCHMIX_INLINE void vstore(float* p, typename FVec<W>::f v) {
  std::memcpy(p, &v, sizeof(v));
}

// exp_nonpos, W lanes at once
template <int W>
PATCHMIX_INLINE typename FVec<W>::f vexp_nonpos(typename FVec<W>::f x) {
  return exp_nonpos_impl<typename FVec<W>::f, typename FVec<W>::i>(x);
}

template <int W>
PATCHMIX_INLINE void vlanes_max_block(const float* x, int64_t sx, int64_t K, float* m) {
  using F = typename FVec<W>::f;
  F acc = F{} - std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < K; ++k) {
    const F xk = vload<W>(x + k * sx);
    acc = xk > acc ? xk : acc;
  }
  vstore<W>(m, acc);
}

template <int W>
PATCHMIX_INLINE void vlanes_expsum_block(const float* x, int64_t sx, int64_t K, const float* m, float* e, int64_t se,
                                         float* s, float* sd) {
  using F = typename FVec<W>::f;
  const F mm = vload<W>(m);
  F ss = F{}, dd = F{};
  if (e != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      const F d = vload<W>(x + k * sx) - mm;
      const F v = vexp_nonpos<W>(d);
      vstore<W>(e + k * se, v);
      ss += v;
      dd += d;
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const F d = vload<W>(x + k * sx) - mm;
      ss += vexp_nonpos<W>(d);
      dd += d;
    }
  }
  vstore<W>(s, ss);
  vstore<W>(sd, dd);
}

template <int W>
PATCHMIX_INLINE void vlanes_affine_block(float* e, int64_t se, int64_t K, const float* a, float b) {
  using F = typename FVec<W>::f;
  const F aa = vload<W>(a);
  for (int64_t k = 0; k < K; ++k) vstore<W>(e + k * se, vload<W>(e + k * se) * aa - b);
}
#endif

// dispatch a block to the vector-type form for float, the omp-simd form otherwise
template <typename T, int W>
PATCHMIX_INLINE void max_block(const T* x, int64_t sx, int64_t K, T* m) {
#ifdef PATCHMIX_VECTOR_TYPES
  if constexpr (std::is_same_v<T, float>) return vlanes_max_block<W>(x, sx, K, m);
#endif
  lanes_max_block<T, W>(x, sx, K, m);
}

template <typename T, int W>
PATCHMIX_INLINE void expsum_block(const T* x, int64_t sx, int64_t K, const T* m, T* e, int64_t se, T* s, T* sd) {
#ifdef PATCHMIX_VECTOR_TYPES
  if constexpr (std::is_same_v<T, float>) return vlanes_expsum_block<W>(x, sx, K, m, e, se, s, sd);
#endif
  lanes_expsum_block<T, W>(x, sx, K, m, e, se, s, sd);
}

template <typename T, int W>
PATCHMIX_INLINE void affine_block(T* e, int64_t se, int64_t K, const T* a, T b) {
#ifdef PATCHMIX_VECTOR_TYPES
  if constexpr (std::is_same_v<T, float>) return vlanes_affine_block<W>(e, se, K, a, b);
#endif
  lanes_affine_block<T, W>(e, se, K, a, b);
}

template <typename T, int WIDE>
PATCHMIX_INLINE void lanes_max_impl(const T* x, int64_t sx, int64_t K, int64_t L, T* m) {
  int64_t p = 0;
  for (; p + WIDE <= L; p += WIDE) max_block<T, WIDE>(x + p, sx, K, m + p);
  for (; p + 4 <= L; p += 4) max_block<T, 4>(x + p, sx, K, m + p);
  for (; p < L; ++p) max_block<T, 1>(x + p, sx, K, m + p);
}

template <typename T, int WIDE>
PATCHMIX_INLINE void lanes_expsum_impl(const T* x, int64_t sx, int64_t K, int64_t L, const T* m, T* e, int64_t se,
                                       T* s, T* sd) {
  int64_t p = 0;
  for (; p + WIDE <= L; p += WIDE)
    expsum_block<T, WIDE>(x + p, sx, K, m + p, e ? e + p : nullptr, se, s + p, sd + p);
  for (; p + 4 <= L; p += 4) expsum_block<T, 4>(x + p, sx, K, m + p, e ? e + p : nullptr, se, s + p, sd + p);
  for (; p < L; ++p) expsum_block<T, 1>(x + p, sx, K, m + p, e ? e + p : nullptr, se, s + p, sd + p);
}

template <typename T, int WIDE>
PATCHMIX_INLINE void lanes_affine_impl(T* e, int64_t se, int64_t K, int64_t L, const T* a, T b) {
  int64_t p = 0;
  for (; p + WIDE <= L; p += WIDE) affine_block<T, WIDE>(e + p, se, K, a + p, b);
  for (; p + 4 <= L; p += 4) affine_block<T, 4>(e + p, se, K, a + p, b);
  for (; p < L; ++p) affine_block<T, 1>(e + p, se, K, a + p, b);
}

template <typename T>
PATCHMIX_INLINE void lanes_log_impl(const T* s, T* out, int64_t L) {
#pragma omp simd
  for (int64_t p = 0; p < L; ++p) out[p] = log_ge1(s[p]);
}

template <typename T>
struct Loops {
  T (*row_max)(const T*, int64_t);
  void (*row_expsum)(const T*, T, int64_t, T*, T*, T*);
  void (*row_affine)(T*, int64_t, T, T);
  void (*lanes_max)(const T*, int64_t, int64_t, int64_t, T*);
  void (*lanes_expsum)(const T*, int64_t, int64_t, int64_t, const T*, T*, int64_t, T*, T*);
  void (*lanes_affine)(T*, int64_t, int64_t, int64_t, const T*, T);
  void (*lanes_log)(const T*, T*, int64_t);
};

#define PATCHMIX_CE_LOOPS(SUFFIX, ATTR, WIDE)                                                                    \
  ATTR float row_max_##SUFFIX(const float* x, int64_t n) { return row_max_impl<float>(x, n); }               \
  ATTR void row_expsum_##SUFFIX(const float* x, float m, int64_t n, float* e, float* s, float* sd) {         \
    row_expsum_impl<float>(x, m, n, e, s, sd);                                                               \
  }                                                                                                          \
  ATTR void row_affine_##SUFFIX(float* e, int64_t n, float a, float b) { row_affine_impl<float>(e, n, a, b); } \
  ATTR void lanes_max_##SUFFIX(const float* x, int64_t sx, int64_t K, int64_t L, float* m) {                 \
    lanes_max_impl<float, WIDE>(x, sx, K, L, m);                                                                   \
  }                                                                                                          \
  ATTR void lanes_expsum_##SUFFIX(const float* x, int64_t sx, int64_t K, int64_t L, const float* m, float* e, \
                                  int64_t se, float* s, float* sd) {                                         \
    lanes_expsum_impl<float, WIDE>(x, sx, K, L, m, e, se, s, sd);                                                  \
  }                                                                                                          \
  ATTR void lanes_affine_##SUFFIX(float* e, int64_t se, int64_t K, int64_t L, const float* a, float b) {     \
    lanes_affine_impl<float, WIDE>(e, se, K, L, a, b);                                                             \
  }                                                                                                          \
  ATTR void lanes_log_##SUFFIX(const float* s, float* out, int64_t L) { lanes_log_impl<float>(s, out, L); }  \
  const Loops<float> loops_##SUFFIX = {row_max_##SUFFIX,   row_expsum_##SUFFIX,   row_affine_##SUFFIX,       \
                                       lanes_max_##SUFFIX, lanes_expsum_##SUFFIX, lanes_affine_##SUFFIX,     \
                                       lanes_log_##SUFFIX};

// GCC will not if-convert a float comparison that may raise FE_INVALID (default -ftrapping-math), so the
// selects in exp_nonpos would stay branches and nothing would vectorise (the (N, P*P, K) forward took 32 ms
// instead of 2.7 ms at N = 256, K = 1000, P = 4 on one core); these loops never read FP flags.
#if defined(__GNUC__) && !defined(__clang__)
#define PATCHMIX_NO_TRAPPING_MATH __attribute__((optimize("no-trapping-math")))
#else
#define PATCHMIX_NO_TRAPPING_MATH
#endif

PATCHMIX_CE_LOOPS(base, PATCHMIX_NO_TRAPPING_MATH, 4)
#ifdef PATCHMIX_X86_ISAS
PATCHMIX_CE_LOOPS(v3, PATCHMIX_TARGET_V3 PATCHMIX_NO_TRAPPING_MATH, 8)
PATCHMIX_CE_LOOPS(v4, PATCHMIX_TARGET_V4 PATCHMIX_NO_TRAPPING_MATH, 16)
#endif

const Loops<float>& float_loops() {
  switch (cpu_isa()) {
#ifdef PATCHMIX_X86_ISAS
    case Isa::x86_64_v4: return loops_v4;
    case Isa::x86_64_v3: return loops_v3;
#endif
    default: return loops_base;
  }
}

const Loops<double>& double_loops() {
  static const Loops<double> loops = {row_max_impl<double>,   row_expsum_impl<double>,   row_affine_impl<double>,
                                      lanes_max_impl<double, 4>, lanes_expsum_impl<double, 4>, lanes_affine_impl<double, 4>,
                                      lanes_log_impl<double>};
  return loops;
}

template <typename T>
const Loops<T>& loops_for();
template <>
const Loops<float>& loops_for<float>() {
  return float_loops();
}
template <>
const Loops<double>& loops_for<double>() {
  return double_loops();
}

// -------------------------------------------------------------------------------------------------
// the op
// -------------------------------------------------------------------------------------------------

struct Geometry {
  int64_t N = 0, K = 0, P = 1, PP = 1;
};

// (N, P*P, K) -> strides (n, k, r, c) with patch p = r * P + c at p * s1; (N, K, P, P) -> its own strides.
std::array<int64_t, 4> patch_strides(const at::Tensor& t, int64_t P) {
  if (t.dim() == 3) return {t.stride(0), t.stride(2), t.stride(1) * P, t.stride(1)};
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

template <typename scalar_t>
struct Kernel {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  static constexpr bool kDirect = std::is_same_v<scalar_t, acc_t>;  // float32/float64: no conversion

  // inputs
  const scalar_t* img = nullptr;
  std::array<int64_t, 2> is{};
  scalar_t* gimg = nullptr;
  std::array<int64_t, 2> gis{};
  const scalar_t* pat = nullptr;
  std::array<int64_t, 4> ps{};
  scalar_t* gpat = nullptr;
  std::array<int64_t, 4> gps{};
  const int64_t* ta = nullptr;
  const int64_t* tb = nullptr;
  const double* lam = nullptr;
  const double* tw = nullptr;  // per-sample (image, patch) term weights (N, 2), or null
  const bool* mask = nullptr;
  Geometry g;
  acc_t eps = 0, w_img = 0, w_pat = 0, gw_img = 0, gw_pat = 0;
  bool compute_grad = false;

  // Cross-entropy of one row against w_a on class a and w_b on class b (w_a + w_b = 1); if compute_grad,
  // writes coef * dCE/dx into grad (stride gk).
  acc_t row(const Loops<acc_t>& L, const scalar_t* x, int64_t sk, scalar_t* grad, int64_t gk, int64_t a,
            int64_t b, acc_t wa, acc_t wb, acc_t coef, acc_t* xbuf, acc_t* ebuf) const {
    const int64_t K = g.K;
    const acc_t* xr;
    if (kDirect && sk == 1) {
      xr = reinterpret_cast<const acc_t*>(x);
    } else {
      for (int64_t k = 0; k < K; ++k) xbuf[k] = static_cast<acc_t>(x[k * sk]);
      xr = xbuf;
    }
    acc_t* e = nullptr;
    if (compute_grad) e = (kDirect && gk == 1) ? reinterpret_cast<acc_t*>(grad) : ebuf;
    const acc_t xa = xr[a], xb = xr[b];
    const acc_t m = L.row_max(xr, K);
    acc_t s, sd;
    L.row_expsum(xr, m, K, e, &s, &sd);
    const acc_t log_s = std::log(s);
    acc_t ce = 0;
    if (wa != 0) ce += wa * (log_s - (xa - m));
    if (wb != 0) ce += wb * (log_s - (xb - m));
    ce *= (1 - eps);
    if (eps != 0) ce += eps * (log_s - sd / static_cast<acc_t>(K));
    if (compute_grad) {
      L.row_affine(e, K, coef / s, coef * eps / static_cast<acc_t>(K));
      e[a] -= coef * (1 - eps) * wa;
      e[b] -= coef * (1 - eps) * wb;
      if (e != reinterpret_cast<acc_t*>(grad)) {
        for (int64_t k = 0; k < K; ++k) grad[k * gk] = static_cast<scalar_t>(e[k]);
      }
    }
    return ce;
  }

  // Sum over the P*P patches of one sample, patches as vector lanes (k-major tile).
  acc_t lanes(const Loops<acc_t>& L, int64_t n, const int64_t* label, acc_t coef, acc_t* tile, acc_t* lane_buf) const {
    const int64_t K = g.K, P = g.P, PP = g.PP;
    const scalar_t* x = pat + n * ps[0];
    const bool x_lanes = ps[3] == 1 && ps[2] == P;  // patch p at x + p
    const acc_t* xt;
    int64_t sx;
    if (kDirect && x_lanes) {
      xt = reinterpret_cast<const acc_t*>(x);
      sx = ps[1];
    } else {
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = 0; r < P; ++r)
          for (int64_t c = 0; c < P; ++c) tile[k * PP + r * P + c] = static_cast<acc_t>(x[k * ps[1] + r * ps[2] + c * ps[3]]);
      xt = tile;
      sx = PP;
    }
    scalar_t* gx = compute_grad ? gpat + n * gps[0] : nullptr;
    const bool g_lanes = gps[3] == 1 && gps[2] == P;
    acc_t* e = nullptr;
    int64_t se = PP;
    if (compute_grad) {
      if (kDirect && g_lanes) {
        e = reinterpret_cast<acc_t*>(gx);
        se = gps[1];
      } else {
        e = tile;  // in place over the gathered copy (or the scratch when x is read directly)
      }
    }
    acc_t* m = lane_buf;
    acc_t* s = lane_buf + PP;
    acc_t* sd = lane_buf + 2 * PP;
    acc_t* xl = lane_buf + 3 * PP;
    acc_t* a = lane_buf + 4 * PP;
    acc_t* log_s = lane_buf + 5 * PP;
    for (int64_t p = 0; p < PP; ++p) xl[p] = xt[label[p] * sx + p];
    L.lanes_max(xt, sx, K, PP, m);
    L.lanes_expsum(xt, sx, K, PP, m, e, se, s, sd);
    L.lanes_log(s, log_s, PP);
    acc_t total = 0;
    for (int64_t p = 0; p < PP; ++p) {
      const acc_t ls = log_s[p];
      acc_t ce = (1 - eps) * (ls - (xl[p] - m[p]));
      if (eps != 0) ce += eps * (ls - sd[p] / static_cast<acc_t>(K));
      total += ce;
      a[p] = coef / s[p];
    }
    if (compute_grad) {
      L.lanes_affine(e, se, K, PP, a, coef * eps / static_cast<acc_t>(K));
      for (int64_t p = 0; p < PP; ++p) e[label[p] * se + p] -= coef * (1 - eps);
      if (e == tile) {
        for (int64_t k = 0; k < K; ++k)
          for (int64_t r = 0; r < P; ++r)
            for (int64_t c = 0; c < P; ++c)
              gx[k * gps[1] + r * gps[2] + c * gps[3]] = static_cast<scalar_t>(tile[k * PP + r * P + c]);
      }
    }
    return total;
  }

  void run(double* sample_loss) const {
    const int64_t N = g.N, K = g.K, P = g.P, PP = g.PP;
    const Loops<acc_t>& L = loops_for<acc_t>();
    const bool patch_rows = pat != nullptr && ps[1] == 1;  // classes contiguous: one row per patch
    const int64_t per_sample = K * ((img != nullptr) + (pat != nullptr) * PP);
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per_sample, 1));
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xbuf(K), ebuf(K), lane_buf(6 * PP);
      std::vector<acc_t> tile(pat != nullptr && !patch_rows ? K * PP : 0);
      std::vector<int64_t> label(PP);
      for (int64_t n = begin; n < end; ++n) {
        acc_t loss = 0;
        const acc_t wi = tw != nullptr ? static_cast<acc_t>(tw[2 * n]) : acc_t(1);
        const acc_t wp = tw != nullptr ? static_cast<acc_t>(tw[2 * n + 1]) : acc_t(1);
        if (img != nullptr) {
          const acc_t l = static_cast<acc_t>(lam[n]);
          const acc_t ce = row(L, img + n * is[0], is[1], compute_grad ? gimg + n * gis[0] : nullptr, gis[1], ta[n],
                               tb[n], l, 1 - l, gw_img * wi, xbuf.data(), ebuf.data());
          loss += w_img * wi * ce;
        }
        if (pat != nullptr) {
          for (int64_t p = 0; p < PP; ++p) label[p] = mask[n * PP + p] ? ta[n] : tb[n];
          acc_t sum = 0;
          if (patch_rows) {
            for (int64_t p = 0; p < PP; ++p) {
              const int64_t r = p / P, c = p % P;
              sum += row(L, pat + n * ps[0] + r * ps[2] + c * ps[3], 1,
                         compute_grad ? gpat + n * gps[0] + r * gps[2] + c * gps[3] : nullptr, gps[1], label[p],
                         label[p], 1, 0, gw_pat * wp, xbuf.data(), ebuf.data());
            }
          } else {
            sum = lanes(L, n, label.data(), gw_pat * wp, tile.data(), lane_buf.data());
          }
          loss += w_pat * wp * sum;
        }
        sample_loss[n] = static_cast<double>(loss);
      }
    });
  }
};

void check_labels(const char* name, const at::Tensor& t, int64_t K) {
  const int64_t* p = t.data_ptr<int64_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    TORCH_CHECK_VALUE(p[i] >= 0 && p[i] < K, "patchmix_cross_entropy: ", name, "[", i, "] = ", p[i],
                      " is out of range for K = ", K, " classes (expected 0 <= ", name, " < ", K, ")");
  }
}

at::Tensor empty_grad(const at::Tensor& ref) { return at::empty({0}, ref.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> patchmix_cross_entropy_cpu(
    const std::optional<at::Tensor>& image_logits, const std::optional<at::Tensor>& patch_logits,
    const at::Tensor& target_a, const at::Tensor& target_b, const at::Tensor& lam,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& term_weights, double image_weight,
    double patch_weight, double label_smoothing, c10::string_view reduction, bool compute_grad) {
  const bool has_img = image_logits.has_value(), has_pat = patch_logits.has_value();
  TORCH_CHECK_VALUE(has_img || has_pat,
                    "patchmix_cross_entropy: image_logits and patch_logits are both None; give at least one");
  const at::Tensor& ref = has_img ? *image_logits : *patch_logits;
  const auto dt = ref.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
                    "patchmix_cross_entropy: logits have dtype ", dt,
                    "; expected one of float32, float16, bfloat16, float64");
  Geometry g;
  g.N = ref.size(0);
  if (has_img) {
    TORCH_CHECK_VALUE(image_logits->dim() == 2, "patchmix_cross_entropy: image_logits must have shape (N, K), got ",
                      image_logits->sizes());
    g.K = image_logits->size(1);
  }
  if (has_pat) {
    const at::Tensor& pl = *patch_logits;
    TORCH_CHECK_VALUE(pl.dim() == 3 || (pl.dim() == 4 && pl.size(2) == pl.size(3)),
                      "patchmix_cross_entropy: patch_logits must have shape (N, P*P, K) or (N, K, P, P), got ",
                      pl.sizes());
    TORCH_CHECK_VALUE(pl.scalar_type() == dt, "patchmix_cross_entropy: patch_logits has dtype ", pl.scalar_type(),
                      " but image_logits has dtype ", dt);
    TORCH_CHECK_VALUE(pl.size(0) == g.N, "patchmix_cross_entropy: patch_logits holds ", pl.size(0),
                      " samples but image_logits holds ", g.N);
    const int64_t Kp = pl.dim() == 3 ? pl.size(2) : pl.size(1);
    TORCH_CHECK_VALUE(!has_img || Kp == g.K, "patchmix_cross_entropy: patch_logits has K = ", Kp,
                      " classes but image_logits has K = ", g.K);
    g.K = Kp;
    TORCH_CHECK_VALUE(mask.has_value(), "patchmix_cross_entropy: patch_logits needs a mask (N, P, P)");
    TORCH_CHECK_VALUE(mask->scalar_type() == at::kBool && mask->dim() == 3 && mask->size(0) == g.N &&
                          mask->size(1) == mask->size(2),
                      "patchmix_cross_entropy: mask must be bool of shape (N, P, P) with N = ", g.N, ", got ",
                      mask->scalar_type(), " ", mask->sizes());
    g.P = mask->size(1);
    g.PP = g.P * g.P;
    const int64_t pp = pl.dim() == 3 ? pl.size(1) : pl.size(2) * pl.size(3);
    TORCH_CHECK_VALUE(pp == g.PP, "patchmix_cross_entropy: patch_logits has ", pp, " patches but the mask has P*P = ",
                      g.PP);
  }
  TORCH_CHECK_VALUE(g.K >= 1, "patchmix_cross_entropy: need at least one class, got K = ", g.K);
  for (const at::Tensor* t : {&target_a, &target_b}) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kLong && t->dim() == 1 && t->size(0) == g.N,
                      "patchmix_cross_entropy: targets must be int64 of shape (", g.N, ",), got ", t->scalar_type(),
                      " ", t->sizes());
  }
  TORCH_CHECK_VALUE(at::isFloatingType(lam.scalar_type()) && lam.dim() == 1 && lam.size(0) == g.N,
                    "patchmix_cross_entropy: lam must be floating of shape (", g.N, ",), got ", lam.scalar_type(), " ",
                    lam.sizes());
  TORCH_CHECK_VALUE(reduction == "mean" || reduction == "sum" || reduction == "none",
                    "patchmix_cross_entropy: reduction must be 'mean', 'sum' or 'none', got '", std::string(reduction),
                    "'");
  TORCH_CHECK_VALUE(label_smoothing >= 0.0 && label_smoothing <= 1.0,
                    "patchmix_cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  for (const at::Tensor* t : {&ref, &target_a, &target_b, &lam}) {
    TORCH_CHECK_VALUE(t->device().is_cpu(), "patchmix_cross_entropy: the CPU kernel got a tensor on ", t->device());
  }
  if (has_img && has_pat) {
    TORCH_CHECK_VALUE(patch_logits->device().is_cpu(), "patchmix_cross_entropy: the CPU kernel got a tensor on ",
                      patch_logits->device());
  }

  // Data checks, before any logit is read: a bad label is an error, never an out-of-bounds read.
  const at::Tensor ta = target_a.contiguous(), tb = target_b.contiguous();
  check_labels("target_a", ta, g.K);
  check_labels("target_b", tb, g.K);
  const at::Tensor lam64 = lam.to(at::kDouble).contiguous();
  {
    const double* l = lam64.data_ptr<double>();
    for (int64_t i = 0; i < g.N; ++i) {
      TORCH_CHECK_VALUE(l[i] >= 0.0 && l[i] <= 1.0, "patchmix_cross_entropy: lam[", i, "] = ", l[i],
                        " is outside [0, 1]");
    }
  }
  at::Tensor tw64;
  if (term_weights.has_value()) {
    TORCH_CHECK_VALUE(at::isFloatingType(term_weights->scalar_type()) && term_weights->dim() == 2 &&
                          term_weights->size(0) == g.N && term_weights->size(1) == 2 && term_weights->device().is_cpu(),
                      "patchmix_cross_entropy: term_weights must be a floating CPU tensor of shape (", g.N, ", 2), got ",
                      term_weights->scalar_type(), " ", term_weights->sizes());
    tw64 = term_weights->to(at::kDouble).contiguous();
    const double* w = tw64.data_ptr<double>();
    for (int64_t i = 0; i < 2 * g.N; ++i) {
      TORCH_CHECK_VALUE(w[i] >= 0.0 && std::isfinite(w[i]), "patchmix_cross_entropy: term_weights[", i / 2, ", ",
                        i % 2, "] = ", w[i], " is not a finite value >= 0");
    }
  }
  at::Tensor mask_c;
  if (has_pat) {
    TORCH_CHECK_VALUE(mask->device().is_cpu(), "patchmix_cross_entropy: the CPU kernel got a tensor on ",
                      mask->device());
    mask_c = mask->contiguous();
  }

  const auto acc_type = dt == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_img = (compute_grad && has_img) ? at::empty_like(*image_logits) : empty_grad(ref);
  at::Tensor grad_pat = (compute_grad && has_pat) ? at::empty_like(*patch_logits) : empty_grad(ref);
  std::vector<double> sample_loss(g.N);
  const double red_scale = (reduction == "mean" && g.N > 0) ? 1.0 / static_cast<double>(g.N) : 1.0;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "patchmix_cross_entropy_cpu", [&] {
    Kernel<scalar_t> k;
    using acc_t = typename Kernel<scalar_t>::acc_t;
    k.g = g;
    k.ta = ta.data_ptr<int64_t>();
    k.tb = tb.data_ptr<int64_t>();
    k.lam = lam64.data_ptr<double>();
    k.tw = tw64.defined() ? tw64.data_ptr<double>() : nullptr;
    k.eps = static_cast<acc_t>(label_smoothing);
    k.compute_grad = compute_grad;
    k.w_img = static_cast<acc_t>(image_weight);
    k.w_pat = static_cast<acc_t>(patch_weight / static_cast<double>(g.PP));
    k.gw_img = static_cast<acc_t>(image_weight * red_scale);
    k.gw_pat = static_cast<acc_t>(patch_weight / static_cast<double>(g.PP) * red_scale);
    if (has_img) {
      k.img = image_logits->data_ptr<scalar_t>();
      k.is = {image_logits->stride(0), image_logits->stride(1)};
      if (compute_grad) {
        k.gimg = grad_img.data_ptr<scalar_t>();
        k.gis = {grad_img.stride(0), grad_img.stride(1)};
      }
    }
    if (has_pat) {
      k.pat = patch_logits->data_ptr<scalar_t>();
      k.ps = patch_strides(*patch_logits, g.P);
      k.mask = mask_c.data_ptr<bool>();
      if (compute_grad) {
        k.gpat = grad_pat.data_ptr<scalar_t>();
        k.gps = patch_strides(grad_pat, g.P);
      }
    }
    if (g.N > 0) k.run(sample_loss.data());
  });

  at::Tensor loss;
  if (reduction == "none") {
    loss = at::empty({g.N}, ref.options().dtype(at::kDouble));
    if (g.N > 0) std::memcpy(loss.data_ptr<double>(), sample_loss.data(), g.N * sizeof(double));
    loss = loss.to(acc_type);
  } else {
    double total = 0.0;
    for (const double v : sample_loss) total += v;
    if (reduction == "mean") total /= static_cast<double>(g.N);  // N = 0: NaN, like torch's mean of nothing
    loss = at::scalar_tensor(total, ref.options().dtype(acc_type));
  }
  return {loss, grad_img, grad_pat};
}

TORCH_LIBRARY_FRAGMENT(patchmix, m) {
  m.def(
      "patchmix_cross_entropy(Tensor? image_logits, Tensor? patch_logits, Tensor target_a, Tensor target_b, "
      "Tensor lam, Tensor? mask, Tensor? term_weights, float image_weight, float patch_weight, float label_smoothing, "
      "str reduction, "
      "bool compute_grad) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(patchmix, CPU, m) { m.impl("patchmix_cross_entropy", &patchmix_cross_entropy_cpu); }

}  // namespace patchmix
