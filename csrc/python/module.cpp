// The Python module patchmix._C. The ops register themselves with the dispatcher from csrc/<op>.cpp
// (static initialisers run when this shared object is loaded); this file only adds build_info().
#include <ATen/Parallel.h>
#include <torch/extension.h>

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
#ifdef PATCHMIX_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
  info["cplusplus"] = static_cast<long>(__cplusplus);
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "patchmix C++ kernels (CPU); the ops live in torch.ops.patchmix";
  m.def("build_info", &build_info, "How this extension was built: compiler, OpenMP, threads, CUDA.");
}
