// Which OpenBLAS kernels loom's matrix products run on. OpenBLAS (built with DYNAMIC_ARCH, as Debian's is) picks its
// kernels from the CPU's family and model; a CPU newer than the library (Debian 12's 0.3.21 does not know Sapphire or
// Emerald Rapids, model 143/207, nor many virtual CPUs) falls back to the generic Prescott (SSE3) kernels, about 3.5x
// slower for sgemm on an AVX-512 core. At load loom re-selects from the CPU's feature flags where OpenBLAS fell back;
// a user's OPENBLAS_CORETYPE is always left as it is.
#pragma once

#include <string>

namespace loom::detail {

/// The OpenBLAS kernel set in use ("SkylakeX", "Cooperlake", "Haswell", "Prescott", ...), or "none" without OpenBLAS.
std::string blas_core_name();

/// What loom did at load: "" when it left OpenBLAS's choice alone, else e.g. "Prescott -> Cooperlake (avx512_bf16)".
const std::string& blas_core_reselected();

/// The kernel set loom would choose for this CPU's flags, whatever OpenBLAS chose ("" when none fits).
std::string blas_core_for_cpu();

}  // namespace loom::detail
