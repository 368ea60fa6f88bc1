#include "tensor/cpu/blas_core.h"

#include <cblas.h>
#include <cpuid.h>

#include <cstdlib>
#include <cstring>

#if defined(OPENBLAS_VERSION)
// OpenBLAS's own entry points for (re)choosing its kernel table (driver/others/dynamic.c): quit clears the choice,
// init chooses again, reading OPENBLAS_CORETYPE. Exported by every DYNAMIC_ARCH build.
extern "C" void gotoblas_dynamic_init(void);
extern "C" void gotoblas_dynamic_quit(void);
#endif

namespace loom::detail {
namespace {

struct CpuFlags {
  bool avx2_fma = false, avx512 = false, avx512_bf16 = false;
};

CpuFlags cpu_flags() {
  CpuFlags f;
#if defined(__x86_64__)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!osxsave || !avx) return f;
  unsigned xcr0_lo, xcr0_hi;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  const bool ymm_state = (xcr0_lo & 0x6) == 0x6, zmm_state = (xcr0_lo & 0xe6) == 0xe6;
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  f.avx2_fma = ymm_state && avx2 && fma;
  f.avx512 = f.avx2_fma && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
  __cpuid_count(7, 1, a, b, c, d);
  f.avx512_bf16 = f.avx512 && (a & (1u << 5));
#endif
  return f;
}

std::string reselect() {
#if defined(OPENBLAS_VERSION)
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return "";  // the user's choice
  const std::string chosen = openblas_get_corename();
  // Only a fallback is overridden: a core OpenBLAS recognised keeps its own tuned table.
  if (chosen != "Prescott") return "";
  const std::string want = blas_core_for_cpu();
  if (want.empty()) return "";
  setenv("OPENBLAS_CORETYPE", want.c_str(), 1);
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  unsetenv("OPENBLAS_CORETYPE");  // children choose for themselves
  return chosen + " -> " + openblas_get_corename();
#else
  return "";
#endif
}

}  // namespace

std::string blas_core_for_cpu() {
  const CpuFlags f = cpu_flags();
  if (f.avx512_bf16) return "Cooperlake";  // SkylakeX's sgemm/dgemm kernels plus bf16
  if (f.avx512) return "SkylakeX";
  if (f.avx2_fma) return "Haswell";
  return "";
}

std::string blas_core_name() {
#if defined(OPENBLAS_VERSION)
  return openblas_get_corename();
#else
  return "none";
#endif
}

const std::string& blas_core_reselected() {
  // Runs before main from tensor.cc's static initialiser, after OpenBLAS's own constructor (a shared library's
  // constructors run before the program's) and before any product.
  static const std::string what = reselect();
  return what;
}

}  // namespace loom::detail
