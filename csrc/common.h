// Helpers shared by the op kernels in csrc/*.cpp.
#pragma once
#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

namespace patchmix {

// dtype names as Python prints them ("torch.float32"), so C++ and Python error messages read alike.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

// Hot loops are compiled several times with GCC target attributes and picked at run time, because an
// extension build gets no CPU_CAPABILITY flags. GCC 12+ on x86-64 (ISA-level names in target attributes and
// __builtin_cpu_supports); other compilers build the baseline only.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
#define PATCHMIX_X86_ISAS 1
#define PATCHMIX_TARGET_V3 __attribute__((target("arch=x86-64-v3")))
#define PATCHMIX_TARGET_V4 __attribute__((target("arch=x86-64-v4,prefer-vector-width=512")))
#endif

// The loop templates must be inlined into each per-ISA wrapper, or all of them would share one baseline copy.
#if defined(__GNUC__)
#define PATCHMIX_INLINE inline __attribute__((always_inline))
#else
#define PATCHMIX_INLINE inline
#endif

enum class Isa { baseline, x86_64_v3, x86_64_v4 };

// The widest variant this CPU runs; PATCHMIX_CPU_ISA=baseline or x86-64-v3 caps it (tests cover every variant).
inline Isa cpu_isa() {
  static const Isa isa = [] {
    const char* cap = std::getenv("PATCHMIX_CPU_ISA");
    const std::string limit = cap != nullptr ? cap : "";
    if (limit == "baseline") return Isa::baseline;
#ifdef PATCHMIX_X86_ISAS
    __builtin_cpu_init();
    if (limit != "x86-64-v3" && __builtin_cpu_supports("x86-64-v4")) return Isa::x86_64_v4;
    if (__builtin_cpu_supports("x86-64-v3")) return Isa::x86_64_v3;
#endif
    return Isa::baseline;
  }();
  return isa;
}

}  // namespace patchmix
