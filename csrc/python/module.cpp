// The Python module patchmix._C. The ops register themselves with the dispatcher from csrc/<op>.cpp
// (static initialisers run when this shared object is loaded); this file adds build_info() and check_range(),
// the host-side data check the Python wrappers run on CPU tensors before an op reads memory through them.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <cmath>

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#elif defined(_MSC_VER)
  info["compiler"] = std::string("msvc ") + std::to_string(_MSC_VER);
#else
  info["compiler"] = std::string("unknown");
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["threads"] = at::get_num_threads();
  info["parallel"] = at::get_parallel_info();
  info["cplusplus"] = static_cast<long>(__cplusplus);
  // the torch headers compiled against (major.minor.patch); patchmix.ops._extension refuses another torch
  info["torch"] = std::string(TORCH_VERSION);
  return info;
}

// The first value of t outside [lo, hi] (NaN counts as outside) as a float, or None. Returns instead of
// throwing: an exception thrown inside this extension was once seen to crash a process on a CUDA build of
// torch 2.11, so the wrappers raise the ValueError in Python. One pass, no temporaries (~1 us for 256
// indices, against ~10 us for aminmax, stack and tolist).
pybind11::object check_range(const at::Tensor& t, double lo, double hi) {
  TORCH_CHECK(t.device().is_cpu(), "check_range: expected a CPU tensor");
  const at::Tensor c = t.contiguous();
  const int64_t n = c.numel();
  double bad = 0.0;
  bool found = false;
  AT_DISPATCH_ALL_TYPES_AND3(at::kHalf, at::kBFloat16, at::kBool, c.scalar_type(), "check_range", [&] {
    const scalar_t* p = c.data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(p[i]);
      if (!(v >= lo && v <= hi)) {  // NaN fails both comparisons
        bad = v;
        found = true;
        break;
      }
    }
  });
  if (!found) return pybind11::none();
  return pybind11::float_(bad);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "patchmix C++ kernels (CPU); the ops live in torch.ops.patchmix";
  m.def("build_info", &build_info, "How this extension was built: compiler, OpenMP, threads, torch version.");
  m.def("check_range", &check_range, "First value of a CPU tensor outside [lo, hi] (NaN included), or None.");
}
