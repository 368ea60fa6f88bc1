// OpenBLAS as loom runs it: kernels chosen from the CPU's flags where OpenBLAS fell back to Prescott
// (tensor/cpu/blas_core.h), a user's OPENBLAS_CORETYPE left alone, and the per-thread-gemm guard
// (tensor/cpu/blas_threads.h) not making the caller's OpenMP loops serial.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "tensor/cpu/blas_core.h"
#include "tensor/cpu/blas_threads.h"

using namespace loom;

namespace {

/// Runs this test program's BlasCore.ReportsItsKernels with `env` and returns its output.
std::string child_report(const std::string& env) {
  char self[4096];
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return "";
  self[n] = '\0';
  const std::string cmd = "env " + env + " '" + std::string(self) + "' --gtest_filter=BlasCore.ReportsItsKernels 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  return out;
}

}  // namespace

// Also the child of the tests below: prints the kernels in use.
TEST(BlasCore, ReportsItsKernels) {
  const std::string name = detail::blas_core_name();
  EXPECT_FALSE(name.empty());
  std::printf("blas_core=%s reselected=[%s]\n", name.c_str(), detail::blas_core_reselected().c_str());
}

TEST(BlasCore, RechoosesFromTheCpuFlagsWhereOpenBlasFellBack) {
  const std::string want = detail::blas_core_for_cpu();
  if (want.empty()) GTEST_SKIP() << "this CPU has neither AVX2+FMA nor AVX-512: Prescott is right";
  // Whatever this process's environment says, a child without OPENBLAS_CORETYPE must not run Prescott.
  const std::string out = child_report("-u OPENBLAS_CORETYPE");
  EXPECT_EQ(out.find("blas_core=Prescott"), std::string::npos) << out;
  EXPECT_NE(out.find("blas_core="), std::string::npos) << out;
  // Where loom stepped in it chose what the flags say.
  if (out.find("reselected=[]") == std::string::npos)
    EXPECT_NE(out.find("blas_core=" + want), std::string::npos) << "expected " << want << ":\n" << out;
}

TEST(BlasCore, LeavesTheUsersOpenblasCoretypeAlone) {
  const std::string out = child_report("OPENBLAS_CORETYPE=Prescott");
  EXPECT_NE(out.find("blas_core=Prescott reselected=[]"), std::string::npos) << out;
}

TEST(BlasCore, TheGemmGuardKeepsTheCallersThreads) {
  const int before = omp_get_max_threads();
  int inside = 0;
  {
    detail::BlasSingleThreaded guard;
    inside = omp_get_max_threads();
  }
  EXPECT_EQ(inside, before) << "BlasSingleThreaded changed OpenMP's thread count: the caller's parallel_for would run "
                               "on one thread";
  EXPECT_EQ(omp_get_max_threads(), before);
}

#if defined(LOOM_OPENBLAS_OPENMP_BUILD)
TEST(BlasCore, LinksOpenBlasBuiltForOpenMp) {
  EXPECT_EQ(openblas_get_parallel(), 2) << "CMake chose OpenBLAS's OpenMP build, but the loader found another one "
                                           "(0 sequential, 1 pthreads): check the RUNPATH of the test program";
}
#endif
